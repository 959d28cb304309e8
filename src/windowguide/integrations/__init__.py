"""windowguide inside other libraries' loops: the diffusers pipeline patch (and, later, guiders)."""
