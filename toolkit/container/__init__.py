"""Grand Challenge algorithm images of a selected model: ``export-container``, ``test-container``.

* :mod:`~toolkit.container.interfaces`: the phase's interfaces (sockets, relative paths,
  overlay segments) bound to the model's channels; :mod:`~toolkit.container.limits` the
  platform's memory, size, time and GPU limits.
* :mod:`~toolkit.container.context`: the build context (Dockerfile from ``container/template/``,
  pinned wheels, the selected models, ``algorithm.json``/``ensemble.json``).
* :mod:`~toolkit.container.entrypoint`: what the container does for one job.
* :mod:`~toolkit.container.engine`: build, run, save through the Docker SDK;
  :mod:`~toolkit.container.podman` a private podman service where there is no Docker;
  :mod:`~toolkit.container.base` a debootstrap base image where there is no registry.
* :mod:`~toolkit.container.archive`: the platform's checks of a saved image.
* :mod:`~toolkit.container.testrun` and :mod:`~toolkit.container.outputs`: test runs on
  platform-style folders and the platform's checks of their outputs;
  :mod:`~toolkit.container.stage` the two stages end to end, :mod:`~toolkit.container.records`
  what they record, :mod:`~toolkit.container.card` the model card ``export/README.md``.
"""
