"""radhub's kernel and host: resources, storage, search, access control, audit,
the FHIR REST API, the app (composition root) and the command line."""
