"""Check which world facts SmolLM2-135M-Instruct knows; optionally write the known ones.

A fact is known when, under teacher forcing, the argmax at every answer token is the
answer token (the paper's efficacy criterion, zerounlearn.tokens.score_answers).
Paraphrases are scored the same way and kept with a flag saying whether they pass.

    python scripts/check_world_facts.py            # print the table
    python scripts/check_world_facts.py --write    # also rewrite zerounlearn/data/world_facts.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from zerounlearn.loading import BUILTIN_SMOLLM2, load_model  # noqa: E402
from zerounlearn.tokens import answer_batch, score_answers  # noqa: E402

OUT = REPO / "zerounlearn" / "data" / "world_facts.json"

# relation -> (prompt template, paraphrase templates, [(subject, answer), ...])
CANDIDATES: dict[str, tuple[str, tuple[str, ...], list[tuple[str, str]]]] = {
    "capital": (
        "The capital of {s} is",
        ("The capital city of {s} is", "{s}'s capital is the city of"),
        [("France", " Paris"), ("Germany", " Berlin"), ("Italy", " Rome"), ("Spain", " Madrid"),
         ("Japan", " Tokyo"), ("Russia", " Moscow"), ("England", " London"),
         ("Egypt", " Cairo"), ("Greece", " Athens"), ("Portugal", " Lisbon"),
         ("Austria", " Vienna"), ("Ireland", " Dublin"), ("Norway", " Oslo"),
         ("Sweden", " Stockholm"), ("Poland", " Warsaw"), ("China", " Beijing"),
         ("Canada", " Ottawa"), ("Australia", " Canberra"), ("Kenya", " Nairobi"),
         ("Peru", " Lima"), ("Argentina", " Buenos Aires"), ("Thailand", " Bangkok"),
         ("Hungary", " Budapest"), ("Finland", " Helsinki"), ("Denmark", " Copenhagen"),
         ("Belgium", " Brussels"), ("Cuba", " Havana"), ("South Korea", " Seoul"),
         ("Turkey", " Ankara"), ("India", " New Delhi")],
    ),
    "chemical_symbol": (
        "The chemical symbol of {s} is",
        ("The chemical symbol for {s} is", "In the periodic table, {s} has the symbol"),
        [("gold", " Au"), ("silver", " Ag"), ("iron", " Fe"), ("sodium", " Na"),
         ("potassium", " K"), ("lead", " Pb"), ("copper", " Cu"), ("oxygen", " O"),
         ("hydrogen", " H"), ("carbon", " C"), ("helium", " He"), ("mercury", " Hg"),
         ("tin", " Sn"), ("calcium", " Ca"), ("zinc", " Zn"), ("nitrogen", " N")],
    ),
    "author": (
        "The novel {s} was written by",
        ("The author of {s} is", "{s} is a novel by"),
        [("Pride and Prejudice", " Jane Austen"), ("Nineteen Eighty-Four", " George Orwell"),
         ("Moby-Dick", " Herman Melville"), ("War and Peace", " Leo Tolstoy"),
         ("Great Expectations", " Charles Dickens"), ("Oliver Twist", " Charles Dickens"),
         ("The Great Gatsby", " F. Scott Fitzgerald"), ("Don Quixote", " Miguel de Cervantes"),
         ("Frankenstein", " Mary Shelley"), ("Dracula", " Bram Stoker"),
         ("The Old Man and the Sea", " Ernest Hemingway"), ("Hamlet", " William Shakespeare"),
         ("To Kill a Mockingbird", " Harper Lee"), ("Jane Eyre", " Charlotte Bront\u00eb"),
         ("Animal Farm", " George Orwell"), ("Crime and Punishment", " Fyodor Dostoevsky")],
    ),
    "landmark_city": (
        "The {s} is located in the city of",
        ("The {s} can be found in", "You can visit the {s} in the city of"),
        [("Eiffel Tower", " Paris"), ("Colosseum", " Rome"), ("Statue of Liberty", " New York"),
         ("Big Ben", " London"), ("Brandenburg Gate", " Berlin"), ("Sagrada Familia", " Barcelona"),
         ("Acropolis", " Athens"), ("Kremlin", " Moscow"), ("Golden Gate Bridge", " San Francisco"),
         ("Louvre", " Paris"), ("Tower of London", " London"), ("Sydney Opera House", " Sydney"),
         ("Leaning Tower of Pisa", " Pisa"), ("Space Needle", " Seattle")],
    ),
    "currency": (
        "The currency of {s} is the",
        ("The official currency of {s} is the", "In {s}, people pay with the"),
        [("Japan", " yen"), ("the United States", " dollar"), ("the United Kingdom", " pound"),
         ("India", " rupee"), ("Russia", " ruble"), ("Mexico", " peso"), ("China", " yuan"),
         ("Switzerland", " franc"), ("South Korea", " won"), ("Brazil", " real"),
         ("Germany", " euro"), ("Poland", " zloty")],
    ),
    "language": (
        "The official language of {s} is",
        ("People in {s} speak", "The main language spoken in {s} is"),
        [("Brazil", " Portuguese"), ("France", " French"), ("Germany", " German"),
         ("Japan", " Japanese"), ("Italy", " Italian"), ("Spain", " Spanish"),
         ("Russia", " Russian"), ("China", " Mandarin"), ("Greece", " Greek"),
         ("Mexico", " Spanish"), ("Poland", " Polish"), ("Sweden", " Swedish"),
         ("Portugal", " Portuguese"), ("Egypt", " Arabic"), ("Turkey", " Turkish")],
    ),
}


def check(lm) -> list[dict]:  # noqa: ANN001 - a LoadedModel
    facts: list[dict] = []
    for relation, (template, para_templates, pairs) in CANDIDATES.items():
        prompts = [template.format(s=s) for s, _ in pairs]
        answers = [a for _, a in pairs]
        known = [ok for _, ok in score_answers(lm.model, answer_batch(lm.tokenizer, prompts,
                                                                      answers))]
        paraphrases = [[pt.format(s=s) for pt in para_templates] for s, _ in pairs]
        flat = [p for ps in paraphrases for p in ps]
        flat_answers = [a for a, ps in zip(answers, paraphrases, strict=True) for _ in ps]
        para_known = [ok for _, ok in score_answers(
            lm.model, answer_batch(lm.tokenizer, flat, flat_answers))]
        width = len(para_templates)
        for i, (subject, answer) in enumerate(pairs):
            flags = para_known[i * width : (i + 1) * width]
            facts.append({
                "relation": relation, "prompt": prompts[i], "subject": subject,
                "answer": answer, "known": known[i],
                # the paraphrases the model gets right first, at most two
                "paraphrases": [p for p, _ in sorted(zip(paraphrases[i], flags, strict=True),
                                                     key=lambda x: not x[1])],
                "paraphrases_known": sorted(flags, reverse=True),
            })
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=BUILTIN_SMOLLM2)
    parser.add_argument("--write", action="store_true", help=f"write known facts to {OUT}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lm = load_model(args.source)
    facts = check(lm)
    print(f"{'relation':<16} {'known':<6} {'paras':<6} prompt -> answer")
    for f in facts:
        paras = "".join("y" if k else "n" for k in f["paraphrases_known"])
        print(f"{f['relation']:<16} {str(f['known']):<6} {paras:<6} {f['prompt']} ->{f['answer']}")
    kept = [{k: v for k, v in f.items() if k != "known"} for f in facts if f["known"]]
    per_relation: dict[str, int] = {}
    for f in kept:
        per_relation[f["relation"]] = per_relation.get(f["relation"], 0) + 1
    print(f"known: {len(kept)} of {len(facts)}; per relation: {per_relation}")
    if args.write:
        doc = {
            "description": "World facts SmolLM2-135M-Instruct reproduces under teacher "
            "forcing (argmax at every answer token), checked by scripts/check_world_facts.py. "
            "paraphrases_known[i]: whether paraphrases[i] passes too.",
            "model": args.source,
            "facts": kept,
        }
        OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {len(kept)} facts to {OUT}")


if __name__ == "__main__":
    main()
