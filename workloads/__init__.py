# Every emosweep process imports this package first: its libraries' telemetry goes off here,
# before any of them is imported, and its child processes inherit the switches.
from workloads.core.privacy import telemetry_off as _telemetry_off

_telemetry_off()
