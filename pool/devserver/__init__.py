"""A Lightning dev server for local dev, tests, bench and tune: strict like real Lightning."""
