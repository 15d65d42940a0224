from quickft.cli import entry

entry()
