"""The environment variables through which a job is told where to compute (names only, no
imports: the job runner pins a job to the CPU without loading torch)."""

# Pins a job to a device ("cpu", "cuda:1"); read by clipdrift.core.device.resolve_device.
DEVICE_ENV = "CLIPDRIFT_DEVICE"
