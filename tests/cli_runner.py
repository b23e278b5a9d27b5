"""Run ``python -m fpgm_core`` in-process for tests: exit status, stdout and stderr."""

from fpgm_core.cli import main


def run_cli(argv, capsys):
    """Run the CLI on ``argv`` (any items, turned to strings); returns (code, out, err)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err
