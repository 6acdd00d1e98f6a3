"""Per-store choice of the vote settings and score calibration on a validation split."""

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import sparse

from mkt.calibration import ScoreCalibration
from mkt.classifier import PATH_SEPARATOR, KnnClassifier
from mkt.evaluation import coverage_at_precision
from mkt.features import LexicalBlock
from mkt.linear_head import LinearHead, fit_size_problem, softmax
from mkt.stores.config import ClassifierSettings
from mkt.titles import hash_text, title_key

logger = logging.getLogger(__name__)

NEIGHBOUR_COUNTS = (1, 5, 10, 20, 40)
VOTE_TEMPERATURES = (0.02, 0.05, 0.1, 0.2)
CLASS_PRIOR_EXPONENTS = (0.0, 0.5)
LEXICAL_WEIGHTS = (0.0, 0.3, 0.5)
BACKOFF_SHARES = (0.8, 0.9, 0.95)
LINEAR_WEIGHTS = (0.25, 0.5, 0.75)
LINEAR_SCALES = (5.0, 10.0, 20.0)
# The kNN grid points, best first, that are tried again blended with the linear head.
BLENDED_POINT_COUNT = 4
BLEND_CHUNK_ROWS = 4096
MIN_VALIDATION_COUNT = 20
# Tuning reads its names into memory, so a larger store is tuned on a random sample of
# this many. The final index is still built on all names, a batch at a time.
MAX_TUNING_NAMES = 500_000


@dataclass(frozen=True)
class VoteSettings:
    """The settings the validation grid chooses among."""

    k: int
    vote_temperature: float
    class_prior_exponent: float
    lexical_weight: float
    linear_weight: float = 0.0
    linear_scale: float = 10.0


@dataclass(frozen=True)
class TuningResult:
    """The chosen settings with their validation accuracy, coverage and calibration."""

    settings: VoteSettings
    validation_count: int
    validation_accuracy: float
    validation_coverage: float
    calibration: ScoreCalibration
    abstain_threshold: float
    backoff_share: float | None


@dataclass(frozen=True)
class LabelledNames:
    """Training names of one store: embeddings, cleaned titles and category ids.

    With `rows`, `embeddings` is a whole snapshot file, usually memory-mapped, and name i
    is its row rows[i]; nothing is copied until a subset is taken. Without, name i is
    embeddings[i].
    """

    embeddings: np.ndarray
    titles: list[str]
    category_ids: list[str]
    rows: np.ndarray | None = None

    def vectors(self) -> np.ndarray:
        """Return the names' embeddings as one float32 array in memory, in name order."""
        selected = self.embeddings if self.rows is None else self.embeddings[self.rows]
        return np.asarray(selected, dtype=np.float32)

    def subset(self, mask: np.ndarray) -> "LabelledNames":
        """Return the names where mask is true, their embeddings read into memory."""
        positions = np.flatnonzero(mask)
        rows = positions if self.rows is None else self.rows[positions]
        return LabelledNames(
            np.asarray(self.embeddings[rows]),
            [self.titles[i] for i in positions],
            [self.category_ids[i] for i in positions],
        )


def split_validation(titles: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Return a mask of the validation names: `fraction` of the distinct title keys.

    All copies of a name land on one side, so validation scores names never seen.
    """
    keys = [title_key(title) for title in titles]
    distinct = sorted(set(keys), key=lambda key: hash_text(f"{seed}:{key}"))
    chosen = set(distinct[: round(len(distinct) * fraction)])
    return np.array([key in chosen for key in keys], dtype=bool)


def vote_shares(
    similarities: np.ndarray,
    labels: np.ndarray,
    vote_scales: np.ndarray,
    *,
    k: int,
    vote_temperature: float,
) -> sparse.csr_matrix:
    """Return each row's vote share per label, as KnnClassifier votes, one row per name.

    `labels` contains -1 where FAISS found no neighbour.
    """
    similarities, labels = similarities[:, :k], labels[:, :k]
    weights = np.exp((similarities - similarities[:, :1]) / vote_temperature)
    weights = np.where(labels >= 0, weights * vote_scales[labels], 0.0)
    rows = np.repeat(np.arange(len(labels)), labels.shape[1])
    votes = sparse.csr_matrix(
        (weights.ravel(), (rows, np.maximum(labels, 0).ravel())),
        shape=(len(labels), len(vote_scales)),
    )
    totals = np.maximum(np.asarray(votes.sum(axis=1)).ravel(), 1e-300)
    return sparse.csr_matrix(sparse.diags(1.0 / totals) @ votes)


def score_votes(
    similarities: np.ndarray,
    labels: np.ndarray,
    vote_scales: np.ndarray,
    *,
    k: int,
    vote_temperature: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Return each row's winning label and its vote share, as KnnClassifier votes."""
    shares = vote_shares(
        similarities, labels, vote_scales, k=k, vote_temperature=vote_temperature
    )
    winners = np.asarray(shares.argmax(axis=1)).ravel()
    return winners, np.asarray(shares.max(axis=1).todense()).ravel()


def search_grid(
    classifier: KnnClassifier,
    validation: LabelledNames,
    *,
    lexical_weight: float,
    precision_target: float,
) -> list[tuple[float, float, VoteSettings, np.ndarray, np.ndarray]]:
    """Score every k, temperature and prior exponent for one lexical weight.

    Returns (accuracy, coverage, settings, top shares, correctness) per grid point.
    """
    position_of = {c: i for i, (c, _) in enumerate(classifier.categories)}
    true_labels = np.array([position_of.get(c, -1) for c in validation.category_ids])
    neighbour_count = min(max(NEIGHBOUR_COUNTS), classifier.index.ntotal)
    similarities, positions = classifier.search_neighbours(
        validation.embeddings, validation.titles, neighbour_count
    )
    labels = np.where(positions >= 0, classifier.vector_labels[positions], -1)
    label_counts = np.bincount(classifier.vector_labels, minlength=len(position_of))

    points = []
    for exponent in CLASS_PRIOR_EXPONENTS:
        vote_scales = np.maximum(label_counts, 1.0) ** -exponent
        for k in NEIGHBOUR_COUNTS:
            for temperature in VOTE_TEMPERATURES:
                winners, shares = score_votes(
                    similarities, labels, vote_scales, k=k, vote_temperature=temperature
                )
                is_correct = winners == true_labels
                coverage, _ = coverage_at_precision(
                    is_correct, shares, precision_target
                )
                settings = VoteSettings(k, temperature, exponent, lexical_weight)
                points.append(
                    (is_correct.mean(), coverage, settings, shares, is_correct)
                )
    return points


def search_blends(
    classifiers: dict[float, KnnClassifier],
    head: LinearHead,
    knn_points: list[VoteSettings],
    validation: LabelledNames,
    *,
    precision_target: float,
) -> list[tuple[float, float, VoteSettings, np.ndarray, np.ndarray]]:
    """Score each kNN grid point blended with the head, for every linear weight and scale.

    Returns (accuracy, coverage, settings, top scores, correctness) per combination. The
    head's decision values are computed in chunks of rows, so memory stays bounded by
    the chunk times the number of categories.
    """
    reference = next(iter(classifiers.values()))
    position_of = {c: i for i, (c, _) in enumerate(reference.categories)}
    true_labels = np.array([position_of.get(c, -1) for c in validation.category_ids])
    neighbour_count = min(max(point.k for point in knn_points), reference.index.ntotal)
    neighbours = {}
    for lexical_weight in {point.lexical_weight for point in knn_points}:
        classifier = classifiers[lexical_weight]
        similarities, positions = classifier.search_neighbours(
            validation.embeddings, validation.titles, neighbour_count
        )
        labels = np.where(positions >= 0, classifier.vector_labels[positions], -1)
        neighbours[lexical_weight] = (similarities, labels)
    label_counts = np.bincount(reference.vector_labels, minlength=len(position_of))
    votes = {
        point: vote_shares(
            *neighbours[point.lexical_weight],
            np.maximum(label_counts, 1.0) ** -point.class_prior_exponent,
            k=point.k,
            vote_temperature=point.vote_temperature,
        )
        for point in knn_points
    }

    combinations = [
        replace(point, linear_weight=weight, linear_scale=scale)
        for point in knn_points
        for weight in LINEAR_WEIGHTS
        for scale in LINEAR_SCALES
    ]
    winners = {c: np.empty(len(true_labels), dtype=np.int64) for c in combinations}
    tops = {c: np.empty(len(true_labels)) for c in combinations}
    for start in range(0, len(true_labels), BLEND_CHUNK_ROWS):
        rows = slice(start, start + BLEND_CHUNK_ROWS)
        decision = head.decision(
            validation.titles[rows], np.asarray(validation.embeddings[rows])
        )
        linears = {scale: softmax(decision, scale) for scale in LINEAR_SCALES}
        for point in knn_points:
            shares = votes[point][rows].toarray()
            for scale, linear in linears.items():
                for weight in LINEAR_WEIGHTS:
                    blended = weight * linear + (1.0 - weight) * shares
                    combination = replace(
                        point, linear_weight=weight, linear_scale=scale
                    )
                    best = blended.argmax(axis=1)
                    winners[combination][rows] = best
                    tops[combination][rows] = blended[np.arange(len(best)), best]

    points = []
    for combination in combinations:
        is_correct = winners[combination] == true_labels
        coverage, _ = coverage_at_precision(
            is_correct, tops[combination], precision_target
        )
        points.append(
            (is_correct.mean(), coverage, combination, tops[combination], is_correct)
        )
    return points


def fit_linear_head(
    names: LabelledNames,
    classifier: KnnClassifier,
    budget_mb: float,
) -> LinearHead | None:
    """Fit a linear head on the names a classifier was built on, when its size allows.

    Returns None, with the reason logged, when the store is too large for one.
    """
    problem = fit_size_problem(
        len(names.titles),
        len(classifier.categories),
        classifier.dimension,
        budget_mb,
    )
    if problem is not None:
        logger.warning("No linear head: %s", problem)
        return None
    started = time.perf_counter()
    position_of = {c: i for i, (c, _) in enumerate(classifier.categories)}
    shared = None
    if classifier.lexical_block is not None:
        shared = classifier.lexical_block.features
    head = LinearHead.fit(
        names.titles,
        names.vectors(),
        np.array([position_of[c] for c in names.category_ids]),
        len(classifier.categories),
        features=shared,
    )
    logger.info(
        "Linear head fitted on %d names in %d categories in %.1f s",
        len(names.titles),
        len(classifier.categories),
        time.perf_counter() - started,
    )
    return head


def build_classifier(
    names: LabelledNames,
    category_paths: dict[str, str],
    settings: VoteSettings,
    *,
    lexical_dimension: int,
    linear_head_budget_mb: float = 512.0,
    index_options: dict | None = None,
) -> KnnClassifier:
    """Build a classifier on names, with a lexical block and a linear head when weighted.

    `index_options` go to `KnnClassifier.build`: index kind, memory budget, recall target,
    re-rank factor.
    A head that the store is too large for is left out, and the vote alone scores.
    """
    lexical_block = None
    if settings.lexical_weight > 0:
        lexical_block = LexicalBlock.fit(names.titles, lexical_dimension)
    classifier = KnnClassifier.build(
        names.embeddings,
        names.category_ids,
        category_paths,
        rows=names.rows,
        titles=names.titles,
        lexical_block=lexical_block,
        **(index_options or {}),
        **asdict(settings),
    )
    if settings.linear_weight > 0:
        classifier.linear_head = fit_linear_head(
            names, classifier, linear_head_budget_mb
        )
        if classifier.linear_head is None:
            classifier.linear_weight = 0.0
    return classifier


def tune_vote_settings(
    names: LabelledNames,
    category_paths: dict[str, str],
    config: ClassifierSettings,
    *,
    precision_target: float,
    seed: int,
) -> TuningResult | None:
    """Choose the vote settings with the best validation accuracy, then coverage.

    Returns None when the validation split would hold fewer than 20 names.
    """
    is_validation = split_validation(names.titles, config.validation_fraction, seed)
    if is_validation.sum() < MIN_VALIDATION_COUNT or is_validation.all():
        return None
    fitting, validation = names.subset(~is_validation), names.subset(is_validation)

    points = []
    classifiers = {}
    for lexical_weight in LEXICAL_WEIGHTS:
        probe = VoteSettings(1, 1.0, 0.0, lexical_weight)
        classifier = build_classifier(
            fitting,
            category_paths,
            probe,
            lexical_dimension=config.lexical_dimension,
        )
        classifiers[lexical_weight] = classifier
        points += search_grid(
            classifier,
            validation,
            lexical_weight=lexical_weight,
            precision_target=precision_target,
        )
    # Ties go to the earlier grid point: no lexical block, no prior, fewer neighbours,
    # and no linear head.
    ranked = sorted(points, key=point_rank, reverse=True)
    head = None
    if config.linear_head:
        head = fit_linear_head(fitting, classifiers[0.0], config.linear_head_budget_mb)
    if head is not None:
        blends = search_blends(
            classifiers,
            head,
            [point[2] for point in ranked[:BLENDED_POINT_COUNT]],
            validation,
            precision_target=precision_target,
        )
        ranked = sorted(ranked + blends, key=point_rank, reverse=True)
    accuracy, coverage, chosen, shares, is_correct = ranked[0]
    logger.info(
        "Settings chosen on %d validation names: %s (accuracy %.3f, coverage %.3f at "
        "precision %.2f)",
        len(validation.titles),
        chosen,
        accuracy,
        coverage,
        precision_target,
    )

    # NOTE: the calibration and threshold come from a classifier trained without the
    # validation names, so the final classifier's scores run slightly optimistic.
    calibration = ScoreCalibration.fit(shares, is_correct)
    _, threshold = coverage_at_precision(
        is_correct, calibration.apply(shares), precision_target
    )
    probe = classifiers[chosen.lexical_weight]
    tuned = KnnClassifier(
        probe.index,
        probe.vector_labels,
        probe.categories,
        **asdict(chosen),
        abstain_threshold=threshold,
        lexical_block=probe.lexical_block,
        calibration=calibration,
        linear_head=head,
    )
    backoff_share = None
    if config.back_off_to_ancestor:
        backoff_share = choose_backoff_share(
            tuned, validation, category_paths, precision_target=precision_target
        )
    return TuningResult(
        chosen,
        len(validation.titles),
        accuracy,
        coverage,
        calibration,
        threshold,
        backoff_share,
    )


def point_rank(point: tuple) -> tuple[float, float]:
    """Rank a grid point by validation accuracy, then coverage, ignoring float noise."""
    return round(point[0], 6), round(point[1], 6)


def choose_backoff_share(
    classifier: KnnClassifier,
    validation: LabelledNames,
    category_paths: dict[str, str],
    *,
    precision_target: float,
) -> float | None:
    """Return the lowest back-off share whose ancestor predictions reach the target.

    An ancestor prediction is correct when it is a prefix of the true path. Returns None when
    no share reaches the target or no validation name backs off.
    """
    true_paths = [category_paths.get(c, c) for c in validation.category_ids]
    for share in BACKOFF_SHARES:
        classifier.backoff_share = share
        predictions = classifier.predict(
            validation.embeddings, top_k=1, titles=validation.titles
        )
        answers = [
            (p.category_path.split(PATH_SEPARATOR), true.split(PATH_SEPARATOR))
            for p, true in zip(predictions, true_paths)
            if p.is_abstained and p.category_path
        ]
        is_right = [true[: len(answer)] == answer for answer, true in answers]
        if is_right and np.mean(is_right) >= precision_target:
            return share
    return None


def tuning_sample(names: LabelledNames, limit: int, seed: int) -> LabelledNames:
    """Return the names in memory, or a random `limit` of them when there are more."""
    if len(names.titles) <= limit:
        return (
            names
            if names.rows is None
            else names.subset(np.ones(len(names.titles), bool))
        )
    chosen = np.zeros(len(names.titles), dtype=bool)
    chosen[np.random.default_rng(seed).choice(len(chosen), limit, replace=False)] = True
    logger.info(
        "Tuning on a random %d of %d training names; the index contains them all",
        limit,
        len(chosen),
    )
    return names.subset(chosen)


def fit_classifier(
    names: LabelledNames,
    category_paths: dict[str, str],
    config: ClassifierSettings,
    *,
    precision_target: float,
    seed: int,
) -> tuple[KnnClassifier, TuningResult | None]:
    """Build a store's classifier on all its training names, tuned on validation first.

    Without tuning (switched off, or too few names) the configured settings are used
    with raw vote shares as scores. Tuning sees at most MAX_TUNING_NAMES of the names.
    """
    tuning = None
    if config.tune_on_validation:
        tuning = tune_vote_settings(
            tuning_sample(names, MAX_TUNING_NAMES, seed),
            category_paths,
            config,
            precision_target=precision_target,
            seed=seed,
        )
        if tuning is None:
            logger.warning(
                "Too few training names (%d) for a validation split; the configured "
                "vote settings are used and scores stay uncalibrated",
                len(names.titles),
            )
    if tuning is None:
        settings = VoteSettings(
            config.k,
            config.vote_temperature,
            config.class_prior_exponent,
            config.lexical_weight,
            config.linear_weight,
            config.linear_scale,
        )
    else:
        settings = tuning.settings

    classifier = build_classifier(
        names,
        category_paths,
        settings,
        lexical_dimension=config.lexical_dimension,
        linear_head_budget_mb=config.linear_head_budget_mb,
        index_options={
            "index": config.index,
            "memory_budget_gb": config.memory_budget_gb,
            "recall_target": config.recall_target,
            "rerank_factor": config.rerank_factor,
        },
    )
    if tuning is not None:
        classifier.calibration = tuning.calibration
        classifier.abstain_threshold = tuning.abstain_threshold
        classifier.backoff_share = tuning.backoff_share
    if config.abstain_threshold is not None:
        classifier.abstain_threshold = config.abstain_threshold
    return classifier, tuning
