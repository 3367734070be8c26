"""The worked example of the seed notes (003): BatchNorm2d on a 2x2x2x2 tensor, momentum 0.1."""

import numpy as np

import normcore

X = np.array([[[[1, 6], [9, 4]], [[12, 18], [13, 11]]],
              [[[2, 7], [3, 8]], [[19, 17], [15, 11]]]], dtype=np.float32)

# torch's outputs, as printed in the notes.
TRAIN_OUTPUT = [[[[-1.4606, 0.3651], [1.4606, -0.3651]], [[-0.8333, 1.1667], [-0.5000, -1.1667]]],
                [[[-1.0954, 0.7303], [-0.7303, 1.0954]], [[1.5000, 0.8333], [0.1667, -1.1667]]]]
EVAL_OUTPUT = [[[[0.0320, 3.2339], [5.1550, 1.9531]], [[5.5605, 9.1693], [6.1620, 4.9590]]],
               [[[0.6724, 3.8742], [1.3128, 4.5146]], [[9.7707, 8.5678], [7.3649, 4.9590]]]]


def test_running_statistics_after_one_and_two_batches(backend):
    bn = normcore.BatchNorm2d(2, eps=1e-5, momentum=0.1, backend=backend)
    y = bn(X)
    np.testing.assert_allclose(normcore.to_numpy(y), TRAIN_OUTPUT, atol=1e-4)
    np.testing.assert_allclose(normcore.to_numpy(bn.running_mean), [0.5, 1.45], atol=1e-6)
    np.testing.assert_allclose(normcore.to_numpy(bn.running_var), [1.7571, 1.9286], atol=1e-4)
    bn(X)
    np.testing.assert_allclose(normcore.to_numpy(bn.running_mean), [0.95, 2.755], atol=1e-6)
    np.testing.assert_allclose(normcore.to_numpy(bn.running_var), [2.4386, 2.7643], atol=1e-4)
    assert int(bn.num_batches_tracked) == 2


def test_eval_uses_running_statistics_and_leaves_them_unchanged(backend):
    bn = normcore.BatchNorm2d(2, backend=backend)
    bn(X)
    bn(X)
    bn.eval()
    before = bn.state_dict()
    y = bn(X)
    bn(X)
    np.testing.assert_allclose(normcore.to_numpy(y), EVAL_OUTPUT, atol=1e-4)
    after = bn.state_dict()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
