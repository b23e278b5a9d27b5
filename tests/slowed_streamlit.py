"""``streamlit`` whose widget callbacks are slowed down: a stand-in for a server too busy to keep up.

    python tests/slowed_streamlit.py run app.py [streamlit options]

In a widget callback (``on_change``, ``on_click``), each read or write of ``st.session_state``
waits ``$FPGM_CALLBACK_DELAY_S`` seconds (default 0.5) *after* Streamlit has checked for a newer
request and before it touches the state: what a callback's thread sees when the machine
deschedules it at that point, which on a busy 2-core server happens at random. A click made meanwhile
stops the callback's run and starts the next one, so the timing under which the slider and the
exported plan once drifted apart (slider 25 %, exported recipe 24 %) is there on any machine,
however fast or idle (``tests/test_e2e_browser.py``). Nothing else changes: the app and
Streamlit are the real ones, and runs outside callbacks go at full speed.
"""

from __future__ import annotations

import os
import sys
import time

from streamlit.runtime.scriptrunner_utils.script_run_context import RunLocation, ThreadState
from streamlit.runtime.state.safe_session_state import SafeSessionState

DELAY_S = float(os.environ.get("FPGM_CALLBACK_DELAY_S", "0.5"))
_init = SafeSessionState.__init__


def _in_callback() -> bool:
    try:
        return ThreadState.get().run_location == RunLocation.CALLBACK
    except RuntimeError:  # a thread outside any script run
        return False


def _slowed_init(self, state, yield_callback) -> None:
    def check_then_wait() -> None:
        yield_callback()
        if _in_callback():
            time.sleep(DELAY_S)

    _init(self, state, check_then_wait)


SafeSessionState.__init__ = _slowed_init

if __name__ == "__main__":
    from streamlit.web.cli import main

    sys.argv[0] = "streamlit"
    sys.exit(main())
