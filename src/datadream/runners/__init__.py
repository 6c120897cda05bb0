"""Runners execute a run's units of work (datadream.units): in this process (local) or as Ray
tasks (ray_runner, an optional extra). Every runner calls the same datadream.runners.execute."""
