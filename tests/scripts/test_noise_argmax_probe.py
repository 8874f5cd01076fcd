"""The noise-term probe: counts every response token once per noise step, rates in [0, 1]."""

import torch


def test_probe_counts_every_response_token(tiny_coco, tiny_llava_factory):
    from halluremedy.data.conversation import ConversationEncoder, Turn
    from halluremedy.generate.pairs import caption_prompt_by_index
    from halluremedy.models.llava import image_seq_length
    from halluremedy.recipes.noise_probe import probe

    model, processor = tiny_llava_factory(0)
    model.eval()
    result = probe(model, processor, tiny_coco, [0, 999], seed=0)
    encoder = ConversationEncoder(processor.tokenizer, image_seq_length(model))
    n_tokens = sum(sum(label != -100 for label in encoder.encode([Turn(caption_prompt_by_index(c, cap), cap)])[1])
                   for im in tiny_coco.images for c, cap in enumerate(im.captions))
    for k in (0, 999):
        assert result[k]["object"]["n"] + result[k]["other"]["n"] == n_tokens
        assert result[k]["object"]["n"] > 0
        for kind in ("object", "other"):
            assert all(0.0 <= result[k][kind][m] <= 1.0 for m in ("clean!=ref", "noised!=ref", "noised!=clean"))
            assert 0.0 <= result[k][kind]["noised!=ref, in caption"] <= result[k][kind]["noised!=ref"]
    # step 0 keeps sqrt(abar_0) ~ 1: the noised argmax is (almost) the clean one; step 999 is mostly noise
    assert result[0]["other"]["noised!=clean"] <= result[999]["other"]["noised!=clean"]
    assert torch.is_grad_enabled()  # the probe's no_grad does not leak
