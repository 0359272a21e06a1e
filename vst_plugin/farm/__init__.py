"""Render farms: a render split into chunks on Dask workers, Open Job Description and Deadline 10 jobs.

Host-side like the rest of vst_plugin (no torch): each render node runs one `vst serve` process per
worker session, started and stopped by the engine (`servers.py`), and the chunks talk to it.

* `chunks.py` - a job's frames split into chunks, each with its pre-roll;
* `servers.py` - one server per worker session: start, find, stop, never outliving its job;
* `verify.py` - the final step: every expected frame exists and reads as a complete image;
* `dask_farm.py` - `vst farm`: chunks on dask.distributed workers;
* `openjd.py`, `deadline.py`, `nuke.py` - `vst submit`: job bundles for farm managers;
* `commands.py` - the command-line commands of all of the above.
"""
