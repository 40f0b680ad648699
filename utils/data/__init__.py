"""The data wing: dataset readers (``layouts``), the dataset class (``dataset``), joint image/mask
transforms (``transforms``), sample orders and test shards (``samplers``), and the generated
"birds" dataset (``generate``, ``python -m utils.data.generate``). Imports only the base."""
