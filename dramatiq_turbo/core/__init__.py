"""The ground floor: what the middleware share, importing nothing above it."""
