"""``python -m fhir_server.cli`` runs the ``radhub`` command."""

import sys

from fhir_server.cli import main

sys.exit(main())
