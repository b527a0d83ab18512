"""Test-only add-on locustfile that starves the load generator on purpose (tests/test_saturation.py).

    locust -f locustfiles/locustfile.py,tests/starve_generator.py --headless ...

In every process that runs users it blocks the gevent hub, and the asyncio loop when there is one, for 80 ms of
every 100 ms with the OS's own sleep (no CPU burnt, so the result does not depend on how busy the machine is):
each one-second window then sees a lag of about 80 ms, past the 50 ms limit, every time.
"""

from locust import events
from locust.runners import MasterRunner

import gevent
from gevent.monkey import get_original

from locust_milvus.runtime.bridge import current_bridge

BLOCK_S = 0.08
EVERY_S = 0.1
_native_sleep = get_original("time", "sleep")


def _block_hub() -> None:
    while True:
        _native_sleep(BLOCK_S)  # the hub cannot run anything else meanwhile
        gevent.sleep(EVERY_S - BLOCK_S)


def _block_loop(loop) -> None:
    _native_sleep(BLOCK_S)  # on the loop's thread: no coroutine runs meanwhile
    loop.call_later(EVERY_S - BLOCK_S, _block_loop, loop)


@events.init.add_listener
def _on_init(environment, **_kwargs) -> None:
    # Added at init, after locust-milvus's own init listener (the main locustfile is imported first) has added its
    # test_start listeners: this one then runs after the set-up, which starts the bridge.
    environment.events.test_start.add_listener(_starve)


def _starve(environment, **_kwargs) -> None:
    if isinstance(environment.runner, MasterRunner):
        return
    gevent.spawn(_block_hub)
    bridge = current_bridge()
    if bridge is not None:
        bridge.loop.call_soon_threadsafe(_block_loop, bridge.loop)
