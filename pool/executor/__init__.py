"""The executor room: one process per pool slot, one run at a time, Lightning-agnostic."""
