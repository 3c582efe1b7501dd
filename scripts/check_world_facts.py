"""Check which world facts SmolLM2-135M-Instruct knows; optionally write the known ones.

A fact is known when, under teacher forcing, the argmax at every answer token is the
answer token (the paper's efficacy criterion, zerounlearn.tokens.score_answers).
Paraphrases are scored the same way and kept with a flag saying whether they pass.

    python scripts/check_world_facts.py            # print the table
    python scripts/check_world_facts.py --write    # also rewrite zerounlearn/data/world_facts.json
    python scripts/check_world_facts.py --extra --write  # EXTRA_CANDIDATES -> more_facts.json
    python scripts/check_world_facts.py --unseen --write  # -> unseen_facts.json (held-out only)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.unseen_fact_candidates import UNSEEN_CANDIDATES  # noqa: E402
from zerounlearn.loading import BUILTIN_SMOLLM2, load_model  # noqa: E402
from zerounlearn.tokens import answer_batch, score_answers  # noqa: E402

OUT = REPO / "zerounlearn" / "data" / "world_facts.json"
EXTRA_OUT = REPO / "zerounlearn" / "data" / "more_facts.json"
UNSEEN_OUT = REPO / "zerounlearn" / "data" / "unseen_facts.json"

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


# relation -> (prompt template, paraphrase templates, [(subject, answer), ...]);
# scripts/check_world_facts.py --extra checks these and writes the known ones to
# zerounlearn/data/more_facts.json (facts not already in world_facts.json).
EXTRA_CANDIDATES: dict[str, tuple[str, tuple[str, ...], list[tuple[str, str]]]] = {
    "capital": (
        "The capital of {s} is",
        ("The capital city of {s} is", "{s}'s capital is the city of"),
        [("the Netherlands", " Amsterdam"), ("Iran", " Tehran"), ("Iraq", " Baghdad"),
         ("Mexico", " Mexico City"), ("Indonesia", " Jakarta"), ("Vietnam", " Hanoi"),
         ("the Philippines", " Manila"), ("Chile", " Santiago"), ("Colombia", " Bogot\u00e1"),
         ("Venezuela", " Caracas"), ("Scotland", " Edinburgh"), ("Wales", " Cardiff"),
         ("Ukraine", " Kyiv"), ("the Czech Republic", " Prague"), ("Romania", " Bucharest"),
         ("Bulgaria", " Sofia"), ("Serbia", " Belgrade"), ("Croatia", " Zagreb"),
         ("Iceland", " Reykjavik"), ("Afghanistan", " Kabul"), ("Saudi Arabia", " Riyadh"),
         ("Syria", " Damascus"), ("Lebanon", " Beirut"), ("Malaysia", " Kuala Lumpur"),
         ("Nepal", " Kathmandu"), ("Bangladesh", " Dhaka"), ("Ethiopia", " Addis Ababa"),
         ("Ghana", " Accra"), ("Morocco", " Rabat"), ("Tunisia", " Tunis"),
         ("New Zealand", " Wellington"), ("Pakistan", " Islamabad"), ("Nigeria", " Abuja"),
         ("Jordan", " Amman"), ("Qatar", " Doha"), ("Latvia", " Riga"),
         ("Lithuania", " Vilnius"), ("Estonia", " Tallinn"), ("Slovakia", " Bratislava"),
         ("Uganda", " Kampala")],
    ),
    "chemical_symbol": (
        "The chemical symbol of {s} is",
        ("The chemical symbol for {s} is", "In the periodic table, {s} has the symbol"),
        [("silicon", " Si"), ("sulfur", " S"), ("chlorine", " Cl"), ("magnesium", " Mg"),
         ("aluminium", " Al"), ("neon", " Ne"), ("uranium", " U"), ("platinum", " Pt"),
         ("fluorine", " F"), ("lithium", " Li"), ("nickel", " Ni"), ("argon", " Ar"),
         ("phosphorus", " P"), ("iodine", " I"), ("cobalt", " Co"), ("titanium", " Ti"),
         ("tungsten", " W"), ("boron", " B"), ("plutonium", " Pu"), ("radium", " Ra")],
    ),
    "landmark_city": (
        "The {s} is located in the city of",
        ("The {s} can be found in", "You can visit the {s} in the city of"),
        [("Taj Mahal", " Agra"), ("Empire State Building", " New York"),
         ("Buckingham Palace", " London"), ("Arc de Triomphe", " Paris"),
         ("Forbidden City", " Beijing"), ("Burj Khalifa", " Dubai"), ("CN Tower", " Toronto"),
         ("Alhambra", " Granada"), ("Parthenon", " Athens"), ("Trevi Fountain", " Rome"),
         ("Pantheon", " Rome"), ("Notre-Dame Cathedral", " Paris"),
         ("Hollywood Sign", " Los Angeles"), ("Brooklyn Bridge", " New York"),
         ("Blue Mosque", " Istanbul"), ("Little Mermaid statue", " Copenhagen"),
         ("Christ the Redeemer statue", " Rio de Janeiro"), ("Gateway Arch", " St. Louis")],
    ),
    "currency": (
        "The currency of {s} is the",
        ("The official currency of {s} is the", "In {s}, people pay with the"),
        [("Thailand", " baht"), ("Israel", " shekel"), ("Turkey", " lira"),
         ("Vietnam", " dong"), ("Sweden", " krona"), ("Denmark", " krone"),
         ("South Africa", " rand"), ("Canada", " dollar"), ("Australia", " dollar"),
         ("France", " euro"), ("Italy", " euro"), ("Spain", " euro"), ("Argentina", " peso"),
         ("Indonesia", " rupiah"), ("Hungary", " forint"), ("Egypt", " pound")],
    ),
    "language": (
        "The official language of {s} is",
        ("People in {s} speak", "The main language spoken in {s} is"),
        [("the Netherlands", " Dutch"), ("Finland", " Finnish"), ("Israel", " Hebrew"),
         ("Iran", " Persian"), ("Hungary", " Hungarian"), ("Denmark", " Danish"),
         ("Norway", " Norwegian"), ("South Korea", " Korean"), ("Vietnam", " Vietnamese"),
         ("Thailand", " Thai"), ("Argentina", " Spanish"), ("Colombia", " Spanish"),
         ("Austria", " German"), ("Ukraine", " Ukrainian"), ("the Czech Republic", " Czech"),
         ("Chile", " Spanish"), ("Peru", " Spanish"), ("Saudi Arabia", " Arabic")],
    ),
    "author": (
        "The novel {s} was written by",
        ("The author of {s} is", "{s} is a novel by"),
        [("Harry Potter", " J.K. Rowling"), ("The Hobbit", " J.R.R. Tolkien"),
         ("Les Mis\u00e9rables", " Victor Hugo"), ("The Catcher in the Rye", " J.D. Salinger"),
         ("Brave New World", " Aldous Huxley"), ("Anna Karenina", " Leo Tolstoy"),
         ("Little Women", " Louisa May Alcott"), ("Wuthering Heights", " Emily Bront\u00eb"),
         ("The Lord of the Rings", " J.R.R. Tolkien"), ("Ulysses", " James Joyce"),
         ("Lolita", " Vladimir Nabokov"), ("One Hundred Years of Solitude",
                                           " Gabriel Garc\u00eda M\u00e1rquez")],
    ),
    "painter": (
        "The painting {s} was painted by",
        ("{s} is a painting by", "The artist who painted {s} is"),
        [("Mona Lisa", " Leonardo da Vinci"), ("The Starry Night", " Vincent van Gogh"),
         ("The Last Supper", " Leonardo da Vinci"), ("Guernica", " Pablo Picasso"),
         ("The Scream", " Edvard Munch"), ("The Persistence of Memory", " Salvador Dal\u00ed"),
         ("The Birth of Venus", " Sandro Botticelli"),
         ("Girl with a Pearl Earring", " Johannes Vermeer"),
         ("The Night Watch", " Rembrandt"), ("Water Lilies", " Claude Monet")],
    ),
    "inventor": (
        "The {s} was invented by",
        ("The inventor of the {s} is", "The {s} was first invented by"),
        [("telephone", " Alexander Graham Bell"), ("light bulb", " Thomas Edison"),
         ("World Wide Web", " Tim Berners-Lee"), ("printing press", " Johannes Gutenberg"),
         ("airplane", " the Wright brothers"), ("steam engine", " James Watt"),
         ("radio", " Guglielmo Marconi"), ("dynamite", " Alfred Nobel"),
         ("theory of relativity", " Albert Einstein")],
    ),
    "founder": (
        "The company {s} was founded by",
        ("{s} was founded by", "The founder of {s} is"),
        [("Microsoft", " Bill Gates"), ("Apple", " Steve Jobs"),
         ("Facebook", " Mark Zuckerberg"), ("Amazon", " Jeff Bezos"),
         ("SpaceX", " Elon Musk"), ("Ford", " Henry Ford"), ("Tesla", " Elon Musk"),
         ("Google", " Larry Page")],
    ),
    "city_country": (
        "The city of {s} is located in the country of",
        ("{s} is a city in the country of", "The city of {s} is in"),
        [("Toronto", " Canada"), ("Mumbai", " India"), ("Sydney", " Australia"),
         ("Barcelona", " Spain"), ("Munich", " Germany"), ("Osaka", " Japan"),
         ("Milan", " Italy"), ("Istanbul", " Turkey"), ("Shanghai", " China"),
         ("Rio de Janeiro", " Brazil"), ("Marseille", " France"), ("Kyoto", " Japan"),
         ("Venice", " Italy"), ("Hamburg", " Germany"), ("Lyon", " France"),
         ("Cape Town", " South Africa"), ("Krakow", " Poland"), ("Vancouver", " Canada"),
         ("Melbourne", " Australia"), ("Seville", " Spain"), ("Porto", " Portugal"),
         ("Florence", " Italy"), ("Geneva", " Switzerland"), ("Manchester", " England")],
    ),
    "continent": (
        "{s} is a country on the continent of",
        ("{s} is located on the continent of", "The country {s} lies in the continent of"),
        [("Brazil", " South America"), ("Kenya", " Africa"), ("France", " Europe"),
         ("Japan", " Asia"), ("Egypt", " Africa"), ("Argentina", " South America"),
         ("Canada", " North America"), ("China", " Asia"), ("Germany", " Europe"),
         ("India", " Asia"), ("Nigeria", " Africa"), ("Peru", " South America"),
         ("Italy", " Europe"), ("Ghana", " Africa"), ("Thailand", " Asia")],
    ),
    "baby_animal": (
        "A baby {s} is called a",
        ("The young of a {s} is called a", "A young {s} is known as a"),
        [("dog", " puppy"), ("cat", " kitten"), ("cow", " calf"), ("sheep", " lamb"),
         ("horse", " foal"), ("kangaroo", " joey"), ("frog", " tadpole"),
         ("duck", " duckling"), ("pig", " piglet"), ("bear", " cub"), ("swan", " cygnet"),
         ("goose", " gosling"), ("deer", " fawn"), ("lion", " cub"), ("goat", " kid")],
    ),
    "opposite": (
        "The opposite of {s} is",
        ("The word that means the opposite of {s} is", "The antonym of {s} is"),
        [("hot", " cold"), ("up", " down"), ("black", " white"), ("day", " night"),
         ("left", " right"), ("good", " bad"), ("big", " small"), ("love", " hate"),
         ("fast", " slow"), ("happy", " sad"), ("light", " dark"), ("war", " peace"),
         ("north", " south"), ("east", " west"), ("old", " new"), ("rich", " poor")],
    ),
}


def check(lm, candidates: dict | None = None) -> list[dict]:  # noqa: ANN001 - a LoadedModel
    facts: list[dict] = []
    for relation, (template, para_templates, pairs) in (candidates or CANDIDATES).items():
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
    parser.add_argument("--extra", action="store_true",
                        help=f"check EXTRA_CANDIDATES instead; --write then writes {EXTRA_OUT}")
    parser.add_argument("--unseen", action="store_true",
                        help=f"check UNSEEN_CANDIDATES; --write then writes {UNSEEN_OUT}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lm = load_model(args.source)
    candidates = (UNSEEN_CANDIDATES if args.unseen else
                  EXTRA_CANDIDATES if args.extra else CANDIDATES)
    facts = check(lm, candidates)
    if args.extra or args.unseen:  # only facts that the earlier files do not hold
        earlier = [OUT] + ([EXTRA_OUT] if args.unseen else [])
        old = {json.dumps([f["relation"], f["prompt"]]) for path in earlier for f in
               json.loads(path.read_text(encoding="utf-8"))["facts"]}
        facts = [f for f in facts if json.dumps([f["relation"], f["prompt"]]) not in old]
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
        out = UNSEEN_OUT if args.unseen else EXTRA_OUT if args.extra else OUT
        if args.extra:
            doc["description"] += " More facts beyond world_facts.json (EXTRA_CANDIDATES)."
        if args.unseen:
            doc["description"] += (
                " Facts no tuning run saw (scripts/unseen_fact_candidates.py, written after"
                " the defaults were chosen): benchmarks score them as held-out facts only.")
        out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {len(kept)} facts to {out}")


if __name__ == "__main__":
    main()
