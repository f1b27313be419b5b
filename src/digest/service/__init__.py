"""Service: what runs the pipeline. pipeline (fetch, build, send, preview, retry), slots (the
schedule's ledger of send times) and scheduler (APScheduler inside `digest serve`), web (the
readers' app: signup, archive, rate limit), process (`digest serve`: scheduler and web server
until a signal), subscribers (the list) and workers (`digest worker`)."""
