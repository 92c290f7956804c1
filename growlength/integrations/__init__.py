"""Integrations with the tools people already train with. Each module imports its library on import;
the core package never imports them."""
