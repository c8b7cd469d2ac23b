"""prefab's progress display (pipeline/core/progress.py: a bar on a terminal, plain lines in a log) for TRL trainers,
in place of the Trainer's own bar and printed metrics dicts: used by training and by evaluation."""

import json
import os
from pathlib import Path


def show_progress(trainer):
    """One progress display (pipeline.core.progress: a bar on a terminal, plain lines in a log) with the step, loss and
    (DPO) reward accuracy or (GRPO) mean reward, in place of the Trainer's tqdm bar and printed log dicts; every log
    line also goes to OUTPUT_DIR/trainer_log.jsonl as it comes (a TrainerCallback: transformers' public extension
    point). Returns the callback; its close() ends the display if training stops with an error."""
    from transformers.trainer_callback import (  # start-up: transformers
        PrinterCallback,
        ProgressCallback,
        TrainerCallback,
    )

    from pipeline.core.progress import progress_bar  # start-up: rich.console, rich.progress, rich.table

    class StepProgress(TrainerCallback):
        display = None

        def on_train_begin(self, args, state, control, **kwargs):
            if (
                state.is_world_process_zero and os.environ.get("RANK", "0") == "0"
            ):  # one display, as the CLI's one summary
                self.display = progress_bar("train", state.max_steps)
                self.advance = self.display.__enter__()
                self.advance(state.global_step, cached=True)  # steps of a resumed checkpoint were not trained here
                self.shown, self.fields = state.global_step, {}

        def on_step_end(self, args, state, control, **kwargs):
            if self.display:
                self.advance(state.global_step - self.shown)
                self.shown = state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            with open(Path(args.output_dir) / "trainer_log.jsonl", "a") as log:
                log.write(json.dumps({"step": state.global_step, **logs}, default=str) + "\n")
            if self.display:
                if "loss" in logs:
                    self.fields["loss"] = f"loss {float(logs['loss']):.4f}"
                accuracy = next(
                    (
                        logs[k]
                        for k in ("rewards/accuracies", "eval_rewards/accuracies", "accuracy", "eval_accuracy")
                        if k in logs
                    ),
                    None,
                )
                if accuracy is not None:
                    self.fields["accuracy"] = f"reward accuracy {float(accuracy):.2f}"
                elif logs.get("reward") is not None:  # GRPO: the verifier's mean reward
                    self.fields["accuracy"] = f"reward {float(logs['reward']):.2f}"
                self.advance(0, note=" ".join(self.fields.values()))

        def on_train_end(self, args, state, control, **kwargs):
            self.close()

        def close(self):
            if self.display:
                self.display.__exit__(None, None, None)
                self.display = None

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    callback = StepProgress()
    trainer.add_callback(callback)
    return callback


def evaluate_with_progress(trainer, description: str) -> dict:
    """trainer.evaluate() with prefab's progress over its batches
    in place of the Trainer's bar and printed metrics dict."""
    from transformers.trainer_callback import (  # start-up: transformers
        PrinterCallback,
        ProgressCallback,
        TrainerCallback,
    )

    from pipeline.core.progress import progress_bar  # start-up: rich.console, rich.progress, rich.table

    class Batches(TrainerCallback):
        def on_prediction_step(self, args, state, control, **kwargs):
            advance()

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if not trainer.is_world_process_zero():  # one process shows progress
        return trainer.evaluate()
    batches = Batches()
    with progress_bar(description, len(trainer.get_eval_dataloader())) as advance:
        trainer.add_callback(batches)
        try:
            return trainer.evaluate()
        finally:
            trainer.remove_callback(batches)
