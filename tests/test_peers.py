"""The peer watch's verdicts on a fake key-value store and a fake clock: who is lost, who failed, who finished."""

import pytest

from vitjax import peers


class Store:
  """The two calls of jax.distributed's client that the watch uses; `down` makes them fail like a dead coordinator."""

  def __init__(self):
    self.values, self.down = {}, False

  def key_value_set(self, key, value, allow_overwrite=False):
    if self.down:
      raise RuntimeError("UNAVAILABLE: Failed to send RPC to coordination service")
    self.values[key] = value

  def key_value_dir_get(self, prefix):
    if self.down:
      raise RuntimeError("UNAVAILABLE: Failed to send RPC to coordination service")
    return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


class Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def watches(count, timeout=10.0):
  store, clock = Store(), Clock()
  return (
    store,
    clock,
    [peers.PeerWatch(store, process_index=i, process_count=count, timeout=timeout, clock=clock) for i in range(count)],
  )


def test_a_peer_silent_for_the_timeout_is_lost_and_named():
  _, clock, (w0, w1, w2) = watches(3)
  for _ in range(6):  # All beat for a while: nobody is lost.
    clock.now += 2.0
    assert w0.check() is None and w1.check() is None and w2.check() is None
  stopped = clock.now
  verdicts = []
  while not verdicts:  # Process 2 stops beating; the others look every 2 s (a fifth of the timeout).
    clock.now += 2.0
    verdicts = [v for v in (w0.check(), w1.check()) if v]
  assert 10.0 <= clock.now - stopped <= 12.0  # The timeout, and at most one look late.
  assert verdicts[0].startswith("lost process 2 of 3: no heartbeat for 1")


def test_a_failed_peer_is_named_with_its_error_and_a_finished_one_is_not_lost():
  _, clock, (w0, w1, w2) = watches(3)
  w1.finish()
  w2.finish(ValueError("unreadable file /data/x.jpg\nmore detail"))
  clock.now += 100.0
  assert w0.check() == "process 2 of 3 failed (ValueError: unreadable file /data/x.jpg); see its log"
  _, clock, (v0, v1) = watches(2)
  v1.finish()
  clock.now += 100.0
  assert v0.check() is None  # Done is no failure, however long ago.


def test_an_unreachable_coordinator_is_lost_after_the_timeout():
  store, clock, (w0, w1) = watches(2)
  store.down = True
  assert w1.check() is None
  clock.now += 9.0
  assert w1.check() is None
  clock.now += 1.0
  assert w1.check().startswith("lost process 0 of 2 (the coordinator): its coordination service has not answered")


def test_explain_returns_at_once_when_every_process_failed_alike():
  _, _, (w0, w1) = watches(2)
  w1.finish(ValueError("the same bug everywhere"))
  assert w0.explain(ValueError("the same bug everywhere")) == "process 1 of 2 failed (ValueError: the same bug " + (
    "everywhere); see its log"
  )
  _, _, (v0, v1) = watches(2)
  v1.finish()
  assert v0.explain(KeyError("mine")) is None  # Its own error: the caller re-raises it.


def test_the_watch_thread_calls_on_lost_once(monkeypatch):
  store = Store()
  found = []
  watch = peers.PeerWatch(store, process_index=0, process_count=2, timeout=0.2, on_lost=found.append).start()
  watch._thread.join(timeout=5)
  assert found == ["lost process 1 of 2: no heartbeat for 0s"]


@pytest.mark.parametrize("timeout, expected", [(3, 6), (60, 120), (2.5, 5)])
def test_the_service_backstop_is_twice_the_watch(timeout, expected):
  assert peers.service_timeout(timeout) == expected


CHILD = r"""
import os, sys
print("I1204 12:00:00.000000 1 hooks.py:180] step 8/40", file=sys.stderr, flush=True)
if sys.argv[1] == "abort":
  for line in (
    "E1204 12:00:01.000000 2 preemption_sync_manager.cc:159] Failed to cancel preemption barrier",
    "E1204 12:00:01.000000 2 coordination_service_agent.cc:289] Polled an error from coordination service",
    "F1204 12:00:01.000000 2 client.h:80] Terminating process because the JAX distributed service detected fatal "
    "errors. This most likely indicates that another task died. absl::Status: UNAVAILABLE: Failed to send RPC to "
    "coordination service. Either the leader task was preempted/died/restarted unexpectedly",
    "*** Check failure stack trace: ***",
    "    @     0x7ff4f4c40634  absl::log_internal::LogMessage::SendToLog()",
    "Fatal Python error: Aborted",
  ):
    print(line, file=sys.stderr, flush=True)
  os.abort()
print("W1204 12:00:02.000000 2 coordination_service_agent.cc:100] a warning that ends nothing", file=sys.stderr)
sys.exit(3)
"""


@pytest.mark.parametrize("how", ["abort", "exit"])
def test_supervise_turns_the_runtime_abort_into_one_line(tmp_path, how):
  import io
  import sys

  script = tmp_path / "child.py"
  script.write_text(CHILD)
  out = io.StringIO()
  code = peers.supervise([sys.executable, str(script), how], stderr=out)
  lines = out.getvalue().splitlines()
  assert lines[0].endswith("step 8/40")
  if how == "abort":
    assert code == peers.EXIT_LOST_PEER and len(lines) == 2
    assert lines[1] == (
      "error: lost process 0 (the coordinator): JAX's runtime ended this process (UNAVAILABLE: Failed to send RPC "
      "to coordination service); exit status 75: relaunch the job to resume."
    )
  else:  # Any other end: every line passes, the status is the child's.
    assert code == 3 and len(lines) == 2 and "a warning that ends nothing" in lines[1]
