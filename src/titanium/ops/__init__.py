"""Operations: `titanium verify` (a journey through a deployment) and `titanium doctor`."""
