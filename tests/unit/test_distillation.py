"""The distillation loss of ``classify train --teacher``: pure logic, no model."""

from __future__ import annotations

import pytest
import torch

from switchboard.classify.data import LabeledTweet
from switchboard.classify.train import (
    Distillation,
    Objective,
    TrainOptions,
    artifact_version,
    blended_loss,
    distillation_loss,
)
from switchboard.shared.labels import Department, Urgency


def _logits(rows: int, classes: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, classes, generator=torch.Generator().manual_seed(seed)) * 3


def test_the_kl_term_is_zero_when_the_student_matches_the_teacher():
    teacher = _logits(5, 8)
    assert float(distillation_loss(teacher.clone(), teacher, 2.0)) == pytest.approx(0, abs=1e-6)
    # Only the distribution counts: a constant shift of the logits changes nothing.
    assert float(distillation_loss(teacher + 4.0, teacher, 2.0)) == pytest.approx(0, abs=1e-5)
    assert float(distillation_loss(_logits(5, 8, seed=1), teacher, 2.0)) > 0.01


def test_the_gradient_pulls_the_softened_student_towards_the_softened_teacher():
    teacher = _logits(4, 8)
    student = _logits(4, 8, seed=1).requires_grad_()
    before = distillation_loss(student, teacher, 2.0)
    before.backward()
    with torch.no_grad():
        # d/ds of T^2 KL = T (softmax(s/T) - softmax(t/T)) / rows: down where the student
        # puts more mass than the teacher, up where it puts less.
        expected = 2.0 * (torch.softmax(student / 2, -1) - torch.softmax(teacher / 2, -1)) / 4
        after = distillation_loss(student - 0.5 * student.grad, teacher, 2.0)
    assert torch.allclose(student.grad, expected, atol=1e-6)
    assert float(after) < float(before.detach())


def test_the_temperature_squared_keeps_the_gradient_scale():
    """Softened by T, the gradient shrinks as 1/T^2 for large T; the T^2 factor undoes that."""
    teacher, student = _logits(64, 8), _logits(64, 8, seed=1)
    norms = []
    for temperature in (4.0, 16.0):
        s = student.clone().requires_grad_()
        distillation_loss(s, teacher, temperature).backward()
        norms.append(float(s.grad.norm()))
    assert norms[0] == pytest.approx(norms[1], rel=0.05)


def test_the_blend_weighs_each_term_and_each_labeled_row_alike():
    hard, soft = torch.tensor(2.0), torch.tensor(1.0)
    assert float(blended_loss(hard, soft, 1.0, 0.5)) == pytest.approx(1.5)
    assert float(blended_loss(hard, soft, 1.0, 1.0)) == pytest.approx(2.0)  # labels only
    assert float(blended_loss(hard, soft, 0.25, 0.5)) == pytest.approx(0.25 + 0.5)


ROWS = [
    LabeledTweet("my bag is lost", Department.CUSTOMER_SERVICE, Urgency.HIGH),
    LabeledTweet("your CEO lied to investors", Department.INVESTOR_RELATIONS, Urgency.NORMAL),
]


def _objective(teacher_departments: torch.Tensor, teacher_urgencies: torch.Tensor) -> Objective:
    distil = Distillation(teacher_departments, teacher_urgencies, ["an unlabeled text"], 0.5, 2.0)
    return Objective(ROWS, TrainOptions(), distil)


def test_unlabeled_rows_get_only_the_distillation_term():
    departments, urgencies = _logits(3, len(Department)), _logits(3, len(Urgency), seed=2)
    objective = _objective(departments, urgencies)
    # An unlabeled row (index 2) whose student logits equal the teacher's costs nothing.
    assert float(objective([2], departments[[2]], urgencies[[2]])) == pytest.approx(0, abs=1e-6)
    # A labeled row with the same agreement still pays its labels' loss, weighed by alpha.
    labeled = objective([0], departments[[0]], urgencies[[0]])
    assert float(labeled) == pytest.approx(
        0.5 * float(objective.hard([0], departments[[0]], urgencies[[0]]))
    )
    # In a mixed batch, the unlabeled row's labels are never looked up.
    mixed = objective([0, 2], departments[[0, 2]], urgencies[[0, 2]])
    assert float(mixed) == pytest.approx(float(labeled) / 2)


def test_without_a_teacher_the_loss_is_the_labels_loss():
    departments, urgencies = _logits(2, len(Department)), _logits(2, len(Urgency), seed=2)
    objective = Objective(ROWS, TrainOptions(), None)
    assert float(objective([0, 1], departments, urgencies)) == pytest.approx(
        float(objective.hard([0, 1], departments, urgencies))
    )


def test_a_distilled_student_has_its_own_version():
    assert artifact_version(TrainOptions()) == "minilm-lora-v1"
    assert artifact_version(TrainOptions(layers=3)) == "minilm3-lora-v1"
    assert artifact_version(TrainOptions(layers=4, teacher="x")) == "minilm4-distil-v1"
