"""The command line: Click's commands parse and print; the runs they start write the files and manifests, show
progress on the console and spread batches over Ray."""
