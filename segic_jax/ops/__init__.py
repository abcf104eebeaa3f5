"""Pure array functions shared by the models: resizing and attention."""
