"""The ground floor: errors, atomic file IO, value checks, the schema machinery, resolvers and
the entry points' guard. Nothing here imports any other part of tskd, so every floor above may
use it."""
