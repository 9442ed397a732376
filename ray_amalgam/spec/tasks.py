"""Task definitions: what a head predicts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

TaskKind = Literal["multiclass", "multilabel"]


class TaskSpec(BaseModel):
    """A `multiclass` task has named `classes`; a `multilabel` task has named `labels`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: TaskKind
    classes: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _names_match_kind(self) -> TaskSpec:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"task name must be letters, digits and '_', got {self.name!r}")
        if self.kind == "multiclass":
            if self.labels:
                raise ValueError("a multiclass task takes 'classes', not 'labels'")
            if len(self.classes) < 2:
                raise ValueError("a multiclass task needs at least 2 classes")
        else:
            if self.classes:
                raise ValueError("a multilabel task takes 'labels', not 'classes'")
            if len(self.labels) < 1:
                raise ValueError("a multilabel task needs at least 1 label")
        names = self.names
        if len(set(names)) != len(names):
            raise ValueError(f"task {self.name!r} repeats a class/label name")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        """Class names (multiclass) or label names (multilabel), in output order."""
        return self.classes if self.kind == "multiclass" else self.labels

    @property
    def num_outputs(self) -> int:
        return len(self.names)


class TaskSet(BaseModel):
    """Metadata that carries named tasks: names are unique, and a task is found by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: tuple[TaskSpec, ...] = ()

    @model_validator(mode="after")
    def _unique_task_names(self) -> TaskSet:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names repeat: {names}")
        return self

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)
