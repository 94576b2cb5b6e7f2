"""lpusim: the application face."""
