"""The runners: `local` (this process) and `ray_runner` (Ray tasks), each calling `execute`, over the
task graph of `graph`. They are registered by name in datadream.registry."""
