"""zerounlearn-admin: commands run beside the service, on its data directory and
database (not through the HTTP API, unlike `zerounlearn`).

    zerounlearn-admin import-data-dir --data-dir D [--url U]
    python -m cli.admin import-data-dir --data-dir D [--url U]     (the same)

import-data-dir copies the metadata of a data directory written before metadata moved to
SQL (its JSON documents) into the database: store.sql.import_data_dir says what and how.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zerounlearn-admin",
                                     description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("import-data-dir", add_help=False,
                        help="import an old data directory's metadata into the database")
    args, rest = parser.parse_known_args(argv)
    if args.command == "import-data-dir":
        from store.sql.import_data_dir import main as import_main

        return import_main(rest)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
