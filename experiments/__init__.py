"""absl entry points: flags -> config -> jaxlin calls -> files in --workdir."""
