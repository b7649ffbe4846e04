"""Constants and the fair-esm reference call shared by the ESM tests."""
import torch

LAYERS, DIM, HEADS = 3, 64, 4

SEQUENCES = [
    "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ",
    "GSHM",
    "ACDEFGHIKLMNPQRSTVWYXBUZO",
    "M",
    "PEPTIDEWITHSOMELENGTHANDMORE" * 2,
]


def fair_esm_residues(model, sequences, layers=(LAYERS,), padded=True):
    """fair-esm per-residue outputs (BOS/EOS stripped), packed; padded batch or one call per sequence."""
    import esm

    convert = esm.data.Alphabet.from_architecture("ESM-1b").get_batch_converter()
    groups = [list(enumerate(sequences))] if padded else [[(i, s)] for i, s in enumerate(sequences)]
    reps = {l: [None] * len(sequences) for l in layers}
    logits = [None] * len(sequences)
    with torch.no_grad():
        for group in groups:
            _, _, tokens = convert([(str(i), s) for i, s in group])
            out = model(tokens, repr_layers=list(layers))
            for row, (i, s) in enumerate(group):
                for l in layers:
                    reps[l][i] = out["representations"][l][row, 1:len(s) + 1]
                logits[i] = out["logits"][row, 1:len(s) + 1]
    return {l: torch.cat(v) for l, v in reps.items()}, torch.cat(logits)
