"""What a study and a case are: the backend registry (``backends``), model shapes (``shapes``), the adapter
contract (``contract``), options and sweep axes (``options``, ``sweeps``), a study read from YAML (``study``),
one case (``cases``), its requests (``workload``) and its work model (``metrics``). Imports ``results`` only;
nothing here touches a GPU."""
