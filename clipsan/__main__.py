from clipsan.cli import entry

entry()
