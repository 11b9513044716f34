"""masks.length_mask: the valid frames of a padded batch."""
import torch

from paraformer_ext.masks import length_mask


def test_length_mask_marks_frames_before_each_length():
    m = length_mask(torch.tensor([0, 2, 4]), 4)
    assert m.dtype == torch.bool and m.tolist() == [
        [False, False, False, False],
        [True, True, False, False],
        [True, True, True, True],
    ]
    assert length_mask(torch.tensor([3]), 0).shape == (1, 0)


def test_length_mask_none_means_nothing_padded_and_device_moves_lengths():
    assert length_mask(None, 5) is None
    assert length_mask(None, 5, "cpu") is None
    m = length_mask(torch.tensor([1, 3], dtype=torch.int32), 3, torch.device("cpu"))
    assert m.device.type == "cpu" and m.tolist() == [[True, False, False], [True, True, True]]
