"""Model families: the adapter protocol, the family registry, backbones."""
