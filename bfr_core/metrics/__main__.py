"""``python -m bfr_core.metrics {lpips,inception,dlib,all} [--download | --source PATH]``: prepare metric weights."""

from .assets import main

raise SystemExit(main())
