"""Liveness of the other processes of a multi-process run: a lost host ends every survivor in bounded time, in one
line naming it, and a host that fails ends the others instead of leaving them waiting in a collective.

jax.distributed's coordination service notices a process that stopped sending heartbeats, but it reacts by aborting
every other process (a C++ `LOG(FATAL)`, then Python's "Fatal Python error: Aborted" and a stack dump, the lost
process named only in a log line far above), and a collective blocked on the dead peer may fail first with a gloo
error that names an address, not a process. jaxlib's hook for that reaction (`missed_heartbeat_callback`) cannot take
a Python function: its status argument has no Python type (the call ends in `std::bad_cast`). So each process beats
in the coordination service's key-value store from a thread of its own and watches the others' beats. A process
whose beat stops for `timeout` seconds without an exit notice is lost: the watcher logs one line naming it and ends
its own process with `EXIT_LOST_PEER` through `os._exit` (a normal exit would wait in jax.distributed's shutdown
barrier for the dead process, then abort). The coordination service's own heartbeat timeout is set to
`SERVICE_TIMEOUT_FACTOR` times `timeout` (`service_timeout`), a backstop that never fires first.

A process that ends (normally or with an exception) posts an exit notice first: peers that find a failed process's
notice stop too, with one line naming it, rather than wait for a collective it will never join.

The loss of process 0, which hosts the coordination service, is the one case no thread can catch: the C++ client's
error polling finds the connection closed and aborts the process at once. `supervise` runs the job in a child
process for that: it passes the child's stderr through, and when the child dies of that abort it replaces the C++
fatal message and the stack dumps with one line and exits `EXIT_LOST_PEER` too.
"""

import ctypes
import logging as std_logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from absl import logging

EXIT_LOST_PEER = 75  # EX_TEMPFAIL: relaunching the same command on every host resumes from the last checkpoint.
SERVICE_TIMEOUT_FACTOR = 2
BEATS_PER_TIMEOUT = 5
_BEAT, _EXIT = "vitjax/peers/beat/", "vitjax/peers/exit/"
DONE = "done"  # The exit notice of a process that returned normally.


def service_timeout(timeout: float) -> int:
  """The coordination service's heartbeat timeout (whole seconds) behind a watch with `timeout`."""
  return int(round(SERVICE_TIMEOUT_FACTOR * timeout))


class PeerWatch:
  """Beats for this process and watches the others' beats and exit notices from a daemon thread.

  `client` is jax.distributed's client (its key-value store); `on_lost(message)` is called once, from the watch
  thread, when another process is lost or has failed: by default it logs `message` and ends the process.
  """

  def __init__(
    self,
    client: Any,
    *,
    process_index: int,
    process_count: int,
    timeout: float,
    on_lost: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
  ):
    self.client, self.index, self.count, self.timeout = client, process_index, process_count, timeout
    self.on_lost = on_lost or end_process
    self.clock = clock
    self._beats, self._seen = 0, {}  # peer -> (last beat value, local time it was first seen)
    self._unreachable_since: float | None = None
    self._verdict: str | None = None
    self._ending = False  # This process posted its own exit notice: its main thread decides what happens.
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="vitjax-peer-watch", daemon=True)

  def start(self) -> "PeerWatch":
    logging.info(
      "Peer watch: process %d of %d beats every %.1fs; another silent for %gs ends this one with exit status %d "
      "(coordination-service heartbeat timeout %ds).",
      self.index,
      self.count,
      self.timeout / BEATS_PER_TIMEOUT,
      self.timeout,
      EXIT_LOST_PEER,
      service_timeout(self.timeout),
    )
    self.check()  # The first beat, before any peer can look for it.
    self._thread.start()
    return self

  def _run(self) -> None:
    while not self._stop.wait(self.timeout / BEATS_PER_TIMEOUT):
      verdict = self.check()
      if verdict and not self._ending:
        self._stop.set()
        self.on_lost(verdict)

  def check(self) -> str | None:
    """One beat and one look at the others; the verdict (a line naming a lost or failed process) once there is one."""
    now = self.clock()
    try:
      self._beats += 1
      self.client.key_value_set(f"{_BEAT}{self.index}", str(self._beats), allow_overwrite=True)
      entries = dict(self.client.key_value_dir_get("vitjax/peers/"))
    except Exception as e:  # noqa: BLE001 - whatever the RPC raises, the coordinator is out of reach.
      self._unreachable_since = self._unreachable_since or now
      if now - self._unreachable_since >= self.timeout and self.index != 0:
        self._verdict = self._verdict or (
          f"lost process 0 of {self.count} (the coordinator): its coordination service has not answered for "
          f"{now - self._unreachable_since:.0f}s ({type(e).__name__}: {_first_line(e)})"
        )
      return self._verdict
    self._unreachable_since = None
    self._verdict = self._verdict or self._judge(entries, now)
    return self._verdict

  def _judge(self, entries: dict[str, str], now: float) -> str | None:
    for peer in range(self.count):
      if peer == self.index:
        continue
      notice = entries.get(f"{_EXIT}{peer}")
      if notice is not None:
        if notice != DONE:
          return f"process {peer} of {self.count} failed ({notice}); see its log"
        continue
      beat = entries.get(f"{_BEAT}{peer}")
      last, since = self._seen.setdefault(peer, (beat, now))
      if beat != last:
        self._seen[peer] = (beat, now)
      elif now - since >= self.timeout:
        return f"lost process {peer} of {self.count}: no heartbeat for {now - since:.0f}s"
    return None

  def finish(self, error: BaseException | None = None) -> None:
    """Posts this process's exit notice (`error`'s first line, or done) and stops beating."""
    self._ending = True
    notice = DONE if error is None else f"{type(error).__name__}: {_first_line(error)}"
    try:
      self.client.key_value_set(f"{_EXIT}{self.index}", notice, allow_overwrite=True)
    except Exception:  # noqa: BLE001 - the coordinator is gone; the peers find this process silent instead.
      pass
    self._stop.set()

  def explain(self, error: BaseException) -> str | None:
    """After this process failed with `error`: whether another process was lost or failed first, which may have
    caused it (a collective whose peer died fails here). Waits until every peer has posted its exit notice or one is
    judged, at most `timeout` and a beat; returns the verdict, or None when `error` is this process's own."""
    self.finish(error)
    deadline = self.clock() + self.timeout * (1 + 1 / BEATS_PER_TIMEOUT)
    while self.clock() < deadline:
      verdict = self.check()
      if verdict or self._all_posted():
        return verdict
      time.sleep(self.timeout / BEATS_PER_TIMEOUT)
    return None

  def _all_posted(self) -> bool:
    try:
      entries = dict(self.client.key_value_dir_get(_EXIT))
    except Exception:  # noqa: BLE001
      return False
    return all(f"{_EXIT}{peer}" in entries for peer in range(self.count) if peer != self.index)


def _first_line(error: BaseException) -> str:
  return (str(error).strip().splitlines() or [""])[0][:300]


def end_process(message: str) -> None:
  """Logs `message` as the one line of a stop forced by another process, flushes, and exits `EXIT_LOST_PEER`."""
  logging.error("%s; this process stops (exit status %d): relaunch the job to resume.", message, EXIT_LOST_PEER)
  for handler in std_logging.getLogger().handlers + logging.get_absl_logger().handlers:
    handler.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(EXIT_LOST_PEER)


# The C++ client's message when the coordination service's error polling ends the process, and the lines of its
# coordination code that come just before it.
RUNTIME_ABORT = "Terminating process because the JAX distributed service detected fatal errors"
_RUNTIME_LINE = re.compile(r"^[EW]\d{4} .*(coordination_service|preemption_sync_manager)\w*\.cc:\d+\]")


def supervise(command: list[str], *, stderr=None) -> int:
  """Runs `command` (this job, as a child process that dies with this one) and returns its exit status.

  SIGTERM and SIGINT are passed on to the child. If JAX's runtime aborts the child because the coordination service
  (process 0) went away, its fatal message, the lines leading to it and the stack dumps after it are replaced by one
  line, and the status is `EXIT_LOST_PEER`.
  """
  stderr = stderr or sys.stderr
  child = subprocess.Popen(command, stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
  previous = {s: signal.signal(s, lambda signum, _: child.send_signal(signum)) for s in (signal.SIGTERM, signal.SIGINT)}
  held, fatal = [], None
  try:
    for raw in child.stderr:
      line = raw.decode(errors="replace")
      if fatal is None and RUNTIME_ABORT in line:
        fatal, held = line, []
      elif fatal is None and _RUNTIME_LINE.match(line):
        held.append(line)  # Shown unless the abort follows.
      elif fatal is None:
        stderr.write("".join(held) + line)
        stderr.flush()
        held = []
    code = child.wait()
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  stderr.write("".join(held))
  if fatal is None:
    return code
  status = fatal.split("absl::Status:", 1)[-1] if "absl::Status:" in fatal else "its connection closed"
  stderr.write(
    f"error: lost process 0 (the coordinator): JAX's runtime ended this process ({status.strip().split('. ')[0]}); "
    f"exit status {EXIT_LOST_PEER}: relaunch the job to resume.\n"
  )
  stderr.flush()
  return EXIT_LOST_PEER


def _die_with_parent() -> None:
  """In the child, before it runs: SIGKILL when the supervising parent dies (Linux), as a lost host would."""
  try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass
