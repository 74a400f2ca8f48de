"""Image builds: a Dockerfile subset, each RUN in a microVM, layers diffed from its disk."""
