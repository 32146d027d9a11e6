"""How much of the CPUs other processes took while a benchmark ran, from Linux /proc (standard library only, so
that benchmark workers under another Python, e.g. one with torch and no JAX, use it too)."""


def cpu_ticks() -> tuple[int, int, int]:
  """(busy ticks of all CPUs, all ticks, this process's user + system ticks), from Linux /proc."""
  with open("/proc/stat") as f:
    ticks = [int(t) for t in f.readline().split()[1:]]
  with open("/proc/self/stat") as f:
    own = f.read().rsplit(")", 1)[1].split()
  return sum(ticks) - ticks[3] - ticks[4], sum(ticks), int(own[11]) + int(own[12])


def other_share(start: tuple[int, int, int], end: tuple[int, int, int]) -> float:
  """Fraction of all CPU time between two `cpu_ticks()` readings used by other processes."""
  (busy0, total0, own0), (busy1, total1, own1) = start, end
  return max(0.0, ((busy1 - busy0) - (own1 - own0)) / max(total1 - total0, 1))
