"""Train and score a classifier on the handwritten digits data set that scikit-learn ships (offline)."""

from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split

try:
    from crucible import progress
except ImportError:  # outside a Crucible image
    def progress(**_):
        pass


def main():
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )
    scores = {}
    for step, trees in enumerate((10, 50, 100), start=1):
        model = RandomForestClassifier(n_estimators=trees, random_state=0, n_jobs=-1).fit(x_train, y_train)
        scores[trees] = accuracy_score(y_test, model.predict(x_test))
        progress(step=step, total=3, accuracy=scores[trees])
    best = max(scores, key=scores.get)
    return {"samples": len(digits.data), "accuracy_by_trees": scores, "best_trees": best, "best_accuracy": scores[best]}
