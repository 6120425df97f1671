"""Build the tiny suite's offline multiple-choice tasks (`suites/tasks/*.jsonl`), deterministically.

lm-eval's hub tasks cannot be downloaded here, so the tiny suite ships its own:

- `kjv_cloze`: a King James verse without its last words; pick the true ending
  among four (the others end verses of about the same length);
- `kjv_next_verse`: a verse; pick the verse that follows it among four (the
  others come from other chapters and have about the same length);
- `plain_cloze`: hand-written everyday-English sentences with one missing word.

Verses come only from chapters the tiny model never trained on: the held-out
rule is imported from `tiny_model`, not restated. Every line is
`{"context": str, "choices": [4 str], "label": int}`. The same inputs give the
same bytes, and a test fails when the shipped files are stale; rerun after
changing a rule here or the held-out split there:

    python -m pytest_invarlock.assets.build_tasks
"""

from __future__ import annotations

import bisect
import json
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from pytest_invarlock.assets.tiny_model import TinyBuildParams, load_chapters, split_chapters

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
SEED = 20250101
CHOICES = 4
KJV_ITEMS = 400
CLOZE_ENDING_WORDS = 4
CLOZE_VERSE_WORDS = (10, 40)  # enough context to predict the ending; short enough for 128 tokens
NEXT_VERSE_CHARS = (40, 180)  # both verses fit the tiny model's 128-token window together
LENGTH_NEIGHBOURS = 30  # distractors come from this many candidates either side in length

# (context, answer, three wrong answers). Facts a child would know; each wrong
# answer is the same kind of word and agrees with the article before the blank.
PLAIN_CLOZE: tuple[tuple[str, str, str, str, str], ...] = (
    ("The sun rises in the", "east", "west", "north", "south"),
    ("The sun sets in the", "west", "east", "north", "south"),
    ("A week has seven", "days", "months", "years", "minutes"),
    ("A year has twelve", "months", "days", "hours", "seconds"),
    ("A day has twenty-four", "hours", "months", "years", "weeks"),
    ("An hour has sixty", "minutes", "days", "months", "years"),
    ("A minute has sixty", "seconds", "hours", "days", "weeks"),
    ("The day after Monday is", "Tuesday", "Friday", "Sunday", "Thursday"),
    ("The day before Friday is", "Thursday", "Monday", "Sunday", "Tuesday"),
    ("The day after Saturday is", "Sunday", "Monday", "Friday", "Tuesday"),
    ("The first month of the year is", "January", "March", "July", "October"),
    ("The last month of the year is", "December", "April", "June", "August"),
    ("The month after June is", "July", "May", "March", "April"),
    ("The month after February is", "March", "January", "November", "October"),
    ("The shortest month of the year is", "February", "March", "July", "October"),
    ("Christmas is celebrated in the month of", "December", "May", "July", "March"),
    ("The coldest season of the year is", "winter", "summer", "spring", "autumn"),
    ("The hottest season of the year is", "summer", "winter", "spring", "autumn"),
    ("A birthday comes once a", "year", "week", "day", "minute"),
    ("Most people eat breakfast in the", "morning", "evening", "night", "afternoon"),
    ("Owls usually hunt at", "night", "noon", "breakfast", "lunch"),
    ("A cow gives us", "milk", "silk", "honey", "wool"),
    ("Honey is made by", "bees", "cows", "dogs", "sheep"),
    ("Milk comes from", "cows", "bees", "snakes", "spiders"),
    ("A sheep is covered in", "wool", "feathers", "scales", "shells"),
    ("Fish breathe through their", "gills", "ears", "eyes", "toes"),
    ("A hen lays", "eggs", "milk", "wool", "honey"),
    ("A baby cat is called a", "kitten", "puppy", "calf", "foal"),
    ("A baby dog is called a", "puppy", "kitten", "calf", "lamb"),
    ("A baby sheep is called a", "lamb", "kitten", "puppy", "foal"),
    ("A baby cow is called a", "calf", "lamb", "puppy", "kitten"),
    ("A baby horse is called a", "foal", "calf", "lamb", "kitten"),
    ("The animal that barks is the", "dog", "cat", "cow", "fish"),
    ("The animal that says moo is the", "cow", "dog", "cat", "duck"),
    ("A spider has eight", "legs", "wings", "heads", "tails"),
    ("An insect has six", "legs", "heads", "tails", "ears"),
    ("The largest animal in the sea is the", "whale", "crab", "shrimp", "snail"),
    ("A camel can live for a long time in the", "desert", "ocean", "river", "lake"),
    ("The king of the jungle is the", "lion", "mouse", "rabbit", "sheep"),
    ("The animal with a very long neck is the", "giraffe", "pig", "mouse", "rabbit"),
    ("A frog begins its life as a", "tadpole", "kitten", "puppy", "chick"),
    ("A snake has no", "legs", "mouth", "eyes", "skin"),
    ("Birds build", "nests", "cars", "boats", "bridges"),
    ("Spiders spin", "webs", "cakes", "coats", "boats"),
    ("Bees live in a", "hive", "kennel", "stable", "garage"),
    ("Fish live in", "water", "trees", "sand", "clouds"),
    ("Pigs like to roll in the", "mud", "clouds", "ceiling", "air"),
    ("Cows eat", "grass", "meat", "fish", "rocks"),
    ("Rabbits love to eat", "carrots", "rocks", "nails", "meat"),
    ("Squirrels collect", "nuts", "coins", "shoes", "nails"),
    ("Cats like to chase", "mice", "elephants", "whales", "lions"),
    ("We see with our", "eyes", "ears", "feet", "elbows"),
    ("We hear with our", "ears", "eyes", "knees", "teeth"),
    ("We smell with our", "nose", "ears", "hands", "knees"),
    ("We chew food with our", "teeth", "ears", "toes", "elbows"),
    ("We walk on our", "feet", "ears", "noses", "elbows"),
    ("The heart pumps", "blood", "sand", "bread", "milk"),
    ("We breathe air into our", "lungs", "stomachs", "ears", "bones"),
    ("On each hand a person has five", "fingers", "noses", "ears", "elbows"),
    ("The hair on a man's chin is called a", "beard", "sleeve", "collar", "pocket"),
    ("Bread is made from", "flour", "stone", "glass", "wool"),
    ("Cheese is made from", "milk", "wood", "sand", "glass"),
    ("Butter is made from", "cream", "rice", "wood", "salt"),
    ("Wine is made from", "grapes", "onions", "carrots", "beans"),
    ("Popcorn is made from", "corn", "rice", "beans", "peas"),
    ("Lemons taste", "sour", "sweet", "salty", "spicy"),
    ("Sugar tastes", "sweet", "sour", "bitter", "salty"),
    ("Sea water tastes", "salty", "sweet", "sour", "bitter"),
    ("Ice cream is", "cold", "hot", "warm", "boiling"),
    ("Fresh grass is", "green", "red", "blue", "purple"),
    ("On a clear day the sky is", "blue", "green", "red", "brown"),
    ("Fresh snow is", "white", "black", "red", "green"),
    ("Coal is", "black", "white", "pink", "yellow"),
    ("Ripe bananas are", "yellow", "blue", "purple", "white"),
    ("Mixing blue and yellow paint makes", "green", "red", "black", "white"),
    ("Mixing red and white paint makes", "pink", "green", "blue", "black"),
    ("Stop signs are usually", "red", "blue", "green", "purple"),
    ("At a traffic light, red means", "stop", "go", "jump", "dance"),
    ("At a traffic light, green means", "go", "stop", "sleep", "sing"),
    ("We keep food cold in the", "refrigerator", "oven", "bathtub", "closet"),
    ("We bake bread in the", "oven", "refrigerator", "bathtub", "closet"),
    ("At night we sleep in a", "bed", "sink", "oven", "drawer"),
    ("You open a locked door with a", "key", "spoon", "sock", "plate"),
    ("We eat soup with a", "spoon", "knife", "fork", "hammer"),
    ("We cut bread with a", "knife", "spoon", "cup", "pillow"),
    ("We write on paper with a", "pen", "fork", "spoon", "shoe"),
    ("We cut paper with", "scissors", "spoons", "socks", "pillows"),
    ("We drive a nail into wood with a", "hammer", "spoon", "towel", "pillow"),
    ("We tell the time by looking at a", "clock", "spoon", "pillow", "carpet"),
    ("We dry ourselves after a bath with a", "towel", "hammer", "fork", "brick"),
    ("We comb our", "hair", "teeth", "feet", "elbows"),
    ("We wear shoes on our", "feet", "hands", "ears", "heads"),
    ("We wear a hat on our", "head", "feet", "knees", "hands"),
    ("We wear gloves on our", "hands", "feet", "ears", "noses"),
    ("When it rains we open an", "umbrella", "oven", "apple", "egg"),
    ("The capital of France is", "Paris", "London", "Berlin", "Madrid"),
    ("The capital of England is", "London", "Paris", "Rome", "Berlin"),
    ("The capital of Italy is", "Rome", "Paris", "Madrid", "Vienna"),
    ("The capital of Germany is", "Berlin", "Rome", "Paris", "Lisbon"),
    ("The capital of Spain is", "Madrid", "Berlin", "Rome", "Athens"),
    ("The capital of Japan is", "Tokyo", "Beijing", "Seoul", "Bangkok"),
    ("The capital of Russia is", "Moscow", "Warsaw", "Vienna", "Oslo"),
    ("The capital of Egypt is", "Cairo", "Rome", "Oslo", "Lima"),
    ("The capital of Greece is", "Athens", "Oslo", "Dublin", "Warsaw"),
    ("The capital of China is", "Beijing", "Tokyo", "Seoul", "Delhi"),
    ("The Eiffel Tower is in", "Paris", "London", "Rome", "Madrid"),
    ("The pyramids of Giza are in", "Egypt", "Norway", "Canada", "Japan"),
    ("Kangaroos live in", "Australia", "Norway", "Canada", "Iceland"),
    ("The largest ocean on Earth is the", "Pacific", "Atlantic", "Indian", "Arctic"),
    ("The river that flows through Cairo is the", "Nile", "Thames", "Seine", "Danube"),
    ("The river that flows through London is the", "Thames", "Nile", "Amazon", "Ganges"),
    ("The tallest mountain in the world is Mount", "Everest", "Fuji", "Olympus", "Etna"),
    ("The Earth goes around the", "sun", "moon", "clouds", "ocean"),
    ("The moon goes around the", "Earth", "Mars", "Jupiter", "Venus"),
    ("The planet we live on is called", "Earth", "Mars", "Venus", "Jupiter"),
    ("The red planet is", "Mars", "Earth", "Neptune", "Uranus"),
    ("The largest planet in our solar system is", "Jupiter", "Mars", "Mercury", "Venus"),
    ("The planet closest to the sun is", "Mercury", "Jupiter", "Saturn", "Neptune"),
    ("The planet famous for its rings is", "Saturn", "Mercury", "Mars", "Venus"),
    ("On a clear night we can see the", "stars", "rainbows", "puddles", "shadows"),
    ("Rain falls from the", "clouds", "grass", "rocks", "trees"),
    ("Ice is frozen", "water", "sand", "wood", "glass"),
    ("Steam comes from boiling", "water", "stone", "sand", "paper"),
    ("Ice melts when it gets", "warm", "cold", "dark", "quiet"),
    ("Water flows", "downhill", "uphill", "upward", "sideways"),
    ("Thunder usually comes after", "lightning", "snow", "rainbows", "sunshine"),
    ("We need a coat when the weather is", "cold", "hot", "warm", "boiling"),
    ("The opposite of hot is", "cold", "tall", "happy", "fast"),
    ("The opposite of up is", "down", "left", "right", "over"),
    ("The opposite of big is", "small", "tall", "wide", "heavy"),
    ("The opposite of day is", "night", "morning", "week", "year"),
    ("The opposite of black is", "white", "red", "green", "blue"),
    ("The opposite of happy is", "sad", "tall", "fast", "loud"),
    ("The opposite of open is", "closed", "tall", "quick", "loud"),
    ("The opposite of young is", "old", "tall", "wet", "loud"),
    ("The opposite of full is", "empty", "tall", "loud", "green"),
    ("The opposite of fast is", "slow", "tall", "green", "loud"),
    ("The opposite of wet is", "dry", "tall", "loud", "green"),
    ("The opposite of win is", "lose", "sing", "eat", "sleep"),
    ("The opposite of early is", "late", "tall", "green", "soft"),
    ("The opposite of north is", "south", "east", "west", "up"),
    ("The opposite of rich is", "poor", "tall", "green", "loud"),
    ("The opposite of true is", "false", "tall", "green", "loud"),
    ("The opposite of inside is", "outside", "upstairs", "tomorrow", "yesterday"),
    ("Two plus two equals", "four", "five", "three", "six"),
    ("Three plus four equals", "seven", "six", "eight", "nine"),
    ("Ten minus three equals", "seven", "six", "five", "eight"),
    ("Five times two equals", "ten", "seven", "twelve", "eight"),
    ("Half of ten is", "five", "two", "four", "six"),
    ("A triangle has", "three sides", "four sides", "five sides", "six sides"),
    ("A square has", "four sides", "three sides", "five sides", "six sides"),
    ("A dozen means", "twelve", "ten", "six", "twenty"),
    ("A century is one hundred", "years", "days", "months", "minutes"),
    ("A bicycle has two", "wheels", "wings", "doors", "roofs"),
    ("A tricycle has three", "wheels", "wings", "doors", "roofs"),
    ("A person who treats sick people is a", "doctor", "baker", "pilot", "farmer"),
    ("A person who bakes bread is a", "baker", "doctor", "pilot", "sailor"),
    ("A person who flies an airplane is a", "pilot", "baker", "farmer", "dentist"),
    ("A person who grows crops is a", "farmer", "pilot", "dentist", "banker"),
    ("A person who looks after teeth is a", "dentist", "baker", "pilot", "farmer"),
    ("A person who teaches children at school is a", "teacher", "pilot", "baker", "farmer"),
    ("A person who catches fish is a", "fisherman", "baker", "pilot", "teacher"),
    ("A person who writes books is an", "author", "actor", "engineer", "umpire"),
    ("A person who cuts hair is a", "barber", "pilot", "farmer", "sailor"),
    ("A doctor works in a", "hospital", "bakery", "stable", "garage"),
    ("We borrow books from a", "library", "bakery", "garage", "stable"),
    ("We buy bread at a", "bakery", "library", "hospital", "garage"),
    ("Children learn to read and write at", "school", "sea", "dinner", "lunch"),
    ("Planes take off from an", "airport", "orchard", "oven", "elevator"),
    ("Trains stop at a", "station", "kitchen", "bedroom", "garden"),
    ("We keep money in a", "bank", "bakery", "barn", "stable"),
    ("Horses are kept in a", "stable", "kitchen", "library", "bank"),
    ("A car is parked in a", "garage", "kitchen", "bathtub", "bedroom"),
    ("In football, players kick a", "ball", "hat", "chair", "book"),
    ("In tennis, players hit the ball with a", "racket", "shoe", "spoon", "book"),
    ("Boats float on", "water", "sand", "rocks", "grass"),
    ("Plants need sunlight and", "water", "plastic", "glass", "metal"),
    ("Trees grow from", "seeds", "coins", "buttons", "nails"),
    ("Paper is made from", "wood", "glass", "iron", "stone"),
    ("Glass is made from", "sand", "wood", "wool", "cotton"),
    ("A magnet attracts", "iron", "wood", "glass", "paper"),
    ("A thermometer measures", "temperature", "distance", "weight", "time"),
    ("A ruler measures", "length", "weight", "temperature", "time"),
    ("A clock shows the", "time", "color", "weight", "smell"),
    ("A library is full of", "books", "cars", "cows", "boats"),
    ("The postman delivers", "letters", "cows", "trees", "rivers"),
    ("Astronauts travel into", "space", "soup", "mud", "caves"),
    ("A rose is a kind of", "flower", "fish", "bird", "stone"),
    ("An oak is a kind of", "tree", "fish", "bird", "stone"),
    ("A salmon is a kind of", "fish", "tree", "bird", "flower"),
    ("An eagle is a kind of", "bird", "fish", "tree", "flower"),
    ("An apple is a kind of", "fruit", "metal", "insect", "fish"),
    ("Gold is a kind of", "metal", "fruit", "bird", "insect"),
    ("A piano has black and white", "keys", "wheels", "wings", "feathers"),
    ("The plural of mouse is", "mice", "men", "geese", "teeth"),
    ("The plural of child is", "children", "women", "oxen", "geese"),
    ("The plural of foot is", "feet", "teeth", "mice", "geese"),
    ("The past tense of go is", "went", "ran", "ate", "sang"),
    ("The past tense of eat is", "ate", "went", "ran", "sang"),
    ("The letter after A is", "B", "C", "D", "Z"),
    ("The last letter of the alphabet is", "Z", "A", "M", "B"),
    ("The first man to walk on the moon was Neil", "Armstrong", "Newton", "Darwin", "Edison"),
    ("The play Romeo and Juliet was written by William", "Shakespeare", "Newton", "Darwin", "Edison"),
    ("The theory of evolution is linked with Charles", "Darwin", "Dickens", "Newton", "Edison"),
    ("The law of gravity was described by Isaac", "Newton", "Darwin", "Edison", "Shakespeare"),
)


def multiple_choice(context: str, answer: str, distractors: Sequence[str], rng: random.Random) -> dict[str, object]:
    """One lm-eval item with the answer at a random position."""
    choices = [answer, *distractors]
    if len(choices) != CHOICES or len(set(choices)) != CHOICES:
        raise ValueError(f"need {CHOICES} distinct choices for {context!r}, got {choices}")
    rng.shuffle(choices)
    return {"context": context, "choices": choices, "label": choices.index(answer)}


def heldout_chapters() -> list[list[str]]:
    """Verse texts of the chapters the tiny model does not train on."""
    return split_chapters(load_chapters(), TinyBuildParams())[1]


def similar_length_picks(pool: Sequence[str], target: str, exclude: set[str], rng: random.Random) -> list[str]:
    """Three distinct pool entries about as long as `target` (sorted `pool`, by length).

    Matching length keeps a model from scoring well by preferring short or long
    choices, which would make the task measure length rather than language.
    """
    centre = bisect.bisect_left(pool, len(target), key=len)
    window = pool[max(0, centre - LENGTH_NEIGHBOURS) : centre + LENGTH_NEIGHBOURS]
    candidates = sorted({text for text in window if text not in exclude and text != target})
    return rng.sample(candidates, CHOICES - 1)


def split_ending(verse: str) -> tuple[str, str]:
    """(prefix, last CLOZE_ENDING_WORDS words) of a verse."""
    words = verse.split()
    return " ".join(words[:-CLOZE_ENDING_WORDS]), " ".join(words[-CLOZE_ENDING_WORDS:])


def kjv_cloze_items(chapters: Sequence[Sequence[str]], rng: random.Random) -> list[dict[str, object]]:
    """Verse prefix -> its true ending; prefixes shared by two verses are skipped (two right answers)."""
    low, high = CLOZE_VERSE_WORDS
    verses = [split_ending(v) for chapter in chapters for v in chapter if low <= len(v.split()) <= high]
    prefix_counts = Counter(prefix for prefix, _ in verses)
    endings = sorted({ending for _, ending in verses}, key=lambda text: (len(text), text))
    unambiguous = [(prefix, ending) for prefix, ending in verses if prefix_counts[prefix] == 1]
    items = []
    for prefix, ending in rng.sample(unambiguous, KJV_ITEMS):
        items.append(multiple_choice(prefix, ending, similar_length_picks(endings, ending, set(), rng), rng))
    return items


def kjv_next_verse_items(chapters: Sequence[Sequence[str]], rng: random.Random) -> list[dict[str, object]]:
    """Verse -> the verse after it; verses whose text recurs elsewhere are skipped (two right answers).

    Distractors come from other chapters, so none is the true neighbour.
    """
    low, high = NEXT_VERSE_CHARS
    fits = {verse for chapter in chapters for verse in chapter if low <= len(verse) <= high}
    pool = sorted(fits, key=lambda text: (len(text), text))
    occurrences = Counter(verse for chapter in chapters for verse in chapter)
    pairs = [
        (index, chapter[i], chapter[i + 1])
        for index, chapter in enumerate(chapters)
        for i in range(len(chapter) - 1)
        if {chapter[i], chapter[i + 1]} <= fits and occurrences[chapter[i]] == 1
    ]
    items = []
    for index, verse, following in rng.sample(pairs, KJV_ITEMS):
        distractors = similar_length_picks(pool, following, set(chapters[index]), rng)
        items.append(multiple_choice(verse, following, distractors, rng))
    return items


def plain_cloze_items(rng: random.Random) -> list[dict[str, object]]:
    return [multiple_choice(context, answer, wrong, rng) for context, answer, *wrong in PLAIN_CLOZE]


def write_jsonl(path: Path, items: Sequence[dict[str, object]]) -> None:
    lines = [json.dumps(item, ensure_ascii=False, sort_keys=True) for item in items]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_tasks(dest: Path = TASKS_DIR) -> dict[str, int]:
    """Write every task's JSONL into `dest`; returns items per task.

    Each task draws from its own generator, so changing one task leaves the
    others' bytes unchanged.
    """
    chapters = heldout_chapters()
    tasks = {
        "kjv_cloze": kjv_cloze_items(chapters, random.Random(f"{SEED}-kjv_cloze")),
        "kjv_next_verse": kjv_next_verse_items(chapters, random.Random(f"{SEED}-kjv_next_verse")),
        "plain_cloze": plain_cloze_items(random.Random(f"{SEED}-plain_cloze")),
    }
    dest.mkdir(parents=True, exist_ok=True)
    for name, items in tasks.items():
        write_jsonl(dest / f"{name}.jsonl", items)
    return {name: len(items) for name, items in tasks.items()}


def main() -> int:
    for name, count in build_tasks().items():
        print(f"{name}: {count} items -> {TASKS_DIR / (name + '.jsonl')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
