"""Runtime: executing runs (context, executor, steps, suspension, worker loop, listener,
recovery). Gets a bundle of what it needs (runtime.bundle.Runtime), never the App."""
