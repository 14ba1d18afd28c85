"""The declarative framework: SDK objects, specs, repo loading, transformations, validation,
plan/apply."""
