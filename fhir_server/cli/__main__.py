"""``python -m fhir_server.cli`` runs the ``radhub`` command."""

import sys

from fhir_server.cli import main

if __name__ == "__main__":  # validation worker processes import this module again
    sys.exit(main())
