"""What an Explainer measures of its maps (`explain evaluate`): deletion and insertion, Average Drop, Increase in
Confidence, the pointing game with boxes, and with `sanity` cascading randomisation of a copy of the model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable, Mapping, Sequence

from explain_cli.errors import BadArgument, blamed
from explain_cli.evaluation import evaluate as evaluation
from explain_cli.evaluation.plan import EvaluationPlan, check_methods
from explain_cli.inputs.sources import Source, key_of
from explain_cli.methods import METHODS, PERTURBATION_METHODS
from explain_cli.results import Evaluation
from explain_cli.running import pipeline
from explain_cli.steps import targets

if TYPE_CHECKING:
    from explain_cli.model.loading import LoadedModel

RANDOM = evaluation.RANDOM
PER_IMAGE = targets.ClassChoice(per_image={})  # the kind of choice evaluate compiles: a class given per image


class Measuring:
    """An Explainer's evaluate; it gives `_suiting`, `choose`, `_run`, `_compiled`, `_predict`, `_forward`, `_step`,
    `_perturbation`, `_cut`, `_layered`, `_loaded`, `_needs_head`, `settings`, `labels`, `name`, `layer`,
    `precision` and `_model`."""

    _suiting: Callable[..., Any]
    choose: Callable[..., Any]
    _run: Callable[..., Any]
    _compiled: Callable[..., Any]
    _predict: Callable[..., Any]
    _forward: Callable[..., Any]
    _step: Callable[..., Any]
    _perturbation: Callable[..., Any]
    _cut: Callable[..., Any]
    _layered: Callable[..., Any]
    _loaded: Any
    _needs_head: Callable[..., Any]
    _region_steps: Callable[..., Any]
    _graph: Any
    _model: Any
    settings: Any
    labels: tuple[str, ...]
    name: str
    layer: str | None
    canvas: Any
    check_embedder: Callable[[], None]

    @property
    def embedding_size(self) -> int | None:
        raise NotImplementedError

    @property
    def precision(self) -> str:
        raise NotImplementedError

    def evaluate(self, images: Any, methods: Sequence[str] = ("gradcam", RANDOM), classes: Any = None,
                 top_k: int | None = None, boxes: Mapping[Hashable, Sequence[Sequence[Any]]] | str | Path | None = None,
                 sanity: bool = False, steps: int = 32, blur_sigma: float = 5.0, tolerance: float = 15.0,
                 seed: int = 0, sanity_stages: int = 6, errors: str = "raise", similar_to: Any = None) -> Evaluation:
        """Each method's maps measured on these images, as `explain evaluate` measures them: deletion and insertion
        AUC, Average Drop, Increase in Confidence, and with `boxes` (per image key: (x0, y0, x1, y1[, class]) in the
        original's pixels, or a CSV file image,x0,y0,x1,y1[,class]) the pointing game and the energy in the boxes;
        with `sanity`, cascading randomisation. The records, and each method's means with their intervals. "auto"
        precision is chosen for all the methods measured together, as `explain evaluate` chooses it. `similar_to`:
        measure maps of the likeness to reference vectors instead of classes (explain's `similar_to`)."""
        suited = self._suiting(methods)
        if suited is not self:
            return suited.evaluate(images, methods, classes, top_k, boxes, sanity, steps, blur_sigma, tolerance, seed,
                                   sanity_stages, errors, similar_to)
        if similar_to is not None:
            if classes is not None or top_k is not None or boxes is not None or sanity:
                raise BadArgument("similar_to", "a likeness is measured alone: give no classes, top_k, boxes or sanity "
                                  "with it")
            return self._evaluate_likeness(images, tuple(methods), similar_to,
                                           EvaluationPlan(tuple(methods), steps, blur_sigma, tolerance, seed), errors)
        choice = self.choose(classes, top_k, evaluating=True)
        plan = EvaluationPlan(tuple(methods), steps, blur_sigma, tolerance, seed, sanity_stages if sanity else 0)
        located = self._boxes(boxes) if boxes is not None else None
        compute, finish = self.evaluation_steps(plan, choice, boxes=located)

        def make(made: Any) -> pipeline.Compute:
            return compute if made is self else made.evaluation_steps(plan, choice, boxes=located)[0]

        records: list[dict[str, Any]] = []
        sane: list[dict[str, Any]] = []
        for result in self._run(images, make, finish, errors):
            records += result.records
            sane += result.side_records
        return Evaluation(tuple(records), tuple(evaluation.summarise(records, plan.methods)), tuple(sane))

    def evaluation_steps(self, plan: EvaluationPlan, choice: targets.ClassChoice,
                         truth: Mapping[Source, int] | None = None, boxes: Mapping[Any, Any] | None = None,
                         figures: Iterable[Source] = (), out_dir: Path | None = None,
                         say: Callable[[str], None] = lambda line: None) -> tuple[pipeline.Compute, pipeline.Finish]:
        """The pipeline steps that evaluate `plan`'s methods (the command line's and evaluate()'s)."""
        check_methods(plan.methods)
        real = [m for m in plan.methods if m != RANDOM]
        explainers = {m: self._compiled(m, PER_IMAGE) for m in real}  # (images, classes (b,)) -> maps (b, 1, h, w)
        settings = evaluation.Settings(plan.methods, plan.steps, plan.blur_sigma, plan.tolerance, plan.seed,
                                       self.settings.batch_size)
        sanity = self._sanity(plan, real, frozenset(figures), out_dir, say) if plan.sanity_stages else None
        predict, forward = self._predict(), self._forward()
        segmentation = None
        if self._needs_head().kind == "pixels":
            segmentation = self._region_steps()
        compute = blamed(evaluation.evaluation_step(predict, forward, explainers,
                                                    lambda p, batch: targets.pick(choice, p, [s.key for s in batch]),
                                                    settings, sanity, segmentation), predict)
        return compute, evaluation.finish_step(self.labels, self.name, self.layer, settings, truth, boxes, sanity,
                                               self.canvas)

    def _evaluate_likeness(self, images: Any, methods: tuple[str, ...], similar_to: Any, plan: EvaluationPlan,
                           errors: str) -> Evaluation:
        """evaluate() of the maps of each image's likeness to its reference vectors (evaluation/likeness.py)."""
        from explain_cli.tasks import similar

        refs = similar.references(similar_to, self.embedding_size)
        make, finish = self.likeness_steps(plan, refs)
        records = [record for result in self._run(images, make, finish, errors) for record in result.records]
        return Evaluation(tuple(records), tuple(evaluation.summarise(records, methods)), ())

    def likeness_steps(self, plan: EvaluationPlan, refs: Any) -> tuple[Callable[[Any], pipeline.Compute],
                                                                        pipeline.Finish]:
        """The steps that evaluate `plan`'s methods on a likeness to references (tasks/similar.References): a compute
        step made per entry, and the finish step (evaluate()'s, and `explain evaluate --to`'s)."""
        from explain_cli.evaluation import likeness

        check_methods(plan.methods)
        self.check_embedder()
        settings = evaluation.Settings(plan.methods, plan.steps, plan.blur_sigma, plan.tolerance, plan.seed,
                                       self.settings.batch_size)

        def make(made: Any) -> pipeline.Compute:
            explainers = {m: made._compiled(m, targets.ClassChoice(), references=refs.count)
                          for m in plan.methods if m != RANDOM}
            return likeness.evaluation_step(made._embedding_step(), made._embedding_step("float32"), explainers, refs.of,
                                            settings)

        return make, evaluation.finish_step(refs.titles, self.name, self.layer, settings, None, None, None, self.canvas)

    def _sanity(self, plan: EvaluationPlan, methods: list[str], figures: frozenset[Source], out_dir: Path | None,
                say: Callable[[str], None]) -> evaluation.Sanity:
        from explain_cli.steps import compiled as core
        from explain_cli.model import randomise

        self._layered()
        cascade = randomise.cascade(self._loaded, plan.sanity_stages, plan.seed)
        say(f"{self.name}: --sanity randomises a copy in {len(cascade.stages)} stages, down to "
            f"{cascade.stages[-1][0]} weighted layers")
        s = self.settings

        def build(model: LoadedModel, graph: Any, cut: Any, method: str) -> Any:
            if method in PERTURBATION_METHODS:  # the randomised copy's own forward passes
                return self._perturbation(method, PER_IMAGE, core.compile_predict(model, graph),
                                          core.compile_predict(model, graph, "float32"))
            if method in METHODS:
                return core.compile_explain(model, cut, method, max_masks=s.max_masks, per_image=True)
            return core.compile_saliency(model, graph, method, layer=cut.layer, per_image=True)

        explainers = randomise.explainers_for(cascade, self._cut().layer, methods, build)
        return evaluation.Sanity(cascade, explainers, figures, out_dir)

    def _boxes(self, boxes: Mapping[Hashable, Sequence[Sequence[Any]]] | str | Path) -> dict[Any, Any]:
        if isinstance(boxes, (str, Path)):
            return evaluation.read_boxes(Path(boxes), None, self._model.labels)
        return evaluation.given_boxes(boxes, self._model.labels, key_of)

