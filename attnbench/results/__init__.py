"""What a result is: the typed record of one measured case (``record``), the case's outcome with its status
(``outcome``), and the files they are written to and read from (``exports``). Torch-free: reading saved results
needs no GPU stack. The lowest floor of the suite after the batch-spec grammar."""
