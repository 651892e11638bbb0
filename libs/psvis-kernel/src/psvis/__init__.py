"""psvis shared kernel: the vocabulary and the ports every service uses."""
