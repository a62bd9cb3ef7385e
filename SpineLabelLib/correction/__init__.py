"""A person's corrections as pure engine code (no MRML): `edits` (guided operations and the diff between
two results), `reconcile` (what the views show, as plain records, turned into a new result)."""
