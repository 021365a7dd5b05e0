"""``python -m vrungpu_magic.cli``: the ``vrungpu`` command."""

from __future__ import annotations

from vrungpu_magic.cli.app import main

raise SystemExit(main())
