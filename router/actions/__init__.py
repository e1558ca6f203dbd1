"""From a received file to its status: the pipeline and the actions it runs."""
